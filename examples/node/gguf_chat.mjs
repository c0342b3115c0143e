#!/usr/bin/env node
// Chat with a smolship GGUF bundle from Node through node-llama-cpp (prebuilt llama.cpp from npm), offline.
//
//   node examples/node/gguf_chat.mjs out/gguf-q8_0 "What is the capital of France?" [--max-new-tokens 64] [--threads N] [--json]
//
// The .gguf file alone is the model: node-llama-cpp renders the chat template stored in the file
// (tokenizer.chat_template, as a Jinja template, no built-in guess) and stops at the file's
// end-of-generation token. BUNDLE may be the bundle folder or the .gguf file itself.
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

import { LlamaChatSession, LlamaLogLevel, getLlama, resolveChatWrapper } from "node-llama-cpp";

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "max-new-tokens": { type: "string", default: "64" },
    threads: { type: "string" },
    json: { type: "boolean", default: false },
  },
});
if (positionals.length < 2) {
  console.error('usage: node gguf_chat.mjs BUNDLE_DIR|FILE.gguf "question" [--max-new-tokens N] [--threads N] [--json]');
  process.exit(2);
}
const [bundleArg, question] = positionals;
let modelPath = path.resolve(bundleArg);
if (existsSync(modelPath) && statSync(modelPath).isDirectory()) {
  const ggufs = readdirSync(modelPath).filter((n) => n.endsWith(".gguf"));
  if (ggufs.length !== 1) {
    console.error(`expected one .gguf file in ${modelPath}, found ${ggufs.length}`);
    process.exit(2);
  }
  modelPath = path.join(modelPath, ggufs[0]);
}

// build: "never" - use the prebuilt CPU binary from npm; never download or compile llama.cpp.
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const threads = opts.threads ? Number(opts.threads) : undefined;
const context = await model.createContext({ contextSize: 2048, threads });
const chatWrapper = resolveChatWrapper(model, { type: "jinjaTemplate", fallbackToOtherWrappersOnJinjaError: false });
const session = new LlamaChatSession({ contextSequence: context.getSequence(), chatWrapper });

const stamps = [];
const t0 = performance.now();
const res = await session.promptWithMeta(question, {
  maxTokens: Number(opts["max-new-tokens"]),
  temperature: 0, // greedy
  onToken: (tokens) => { for (const _ of tokens) stamps.push(performance.now()); },
  onTextChunk: (text) => { if (!opts.json) process.stdout.write(text); },
});
const steps = stamps.length - 1;
const result = {
  answer: res.responseText.trim(),
  tokens: stamps.length,
  stop_reason: res.stopReason, // "eogToken": the file's end-of-generation token ended the answer
  eos_token: model.tokens.eosString,
  chat_wrapper: chatWrapper.wrapperName,
  ttft_ms: stamps.length ? Math.round(stamps[0] - t0) : null,
  decode_tok_s: steps > 0 ? Math.round((10000 * steps) / (stamps.at(-1) - stamps[0])) / 10 : null,
  threads: context.currentThreads ?? threads ?? null,
};
if (opts.json) {
  console.log(JSON.stringify(result));
} else {
  console.log(`\n[${result.tokens} tokens, ${result.decode_tok_s} tok/s decode, stop: ${result.stop_reason} (${result.eos_token}), template: ${result.chat_wrapper}]`);
}
await context.dispose();
await model.dispose();
await llama.dispose();
