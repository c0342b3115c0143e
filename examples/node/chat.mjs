#!/usr/bin/env node
// Chat with a smolship ONNX bundle from Node through transformers.js (onnxruntime-node, CPU), offline.
//
//   node examples/node/chat.mjs out/onnx-int4 "What is the capital of France?" [--max-new-tokens 64] [--threads N] [--json]
//
// The bundle folder is loaded unchanged: config.json (its "transformers.js_config".dtype picks
// onnx/model_q4.onnx, onnx/model_quantized.onnx, ...), tokenizer.json, tokenizer_config.json (with the
// chat template) and generation_config.json (the stop tokens). No network: remote models are off.
import path from "node:path";
import { parseArgs } from "node:util";

import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from "@huggingface/transformers";

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "max-new-tokens": { type: "string", default: "64" },
    threads: { type: "string" },
    json: { type: "boolean", default: false },
  },
});
if (positionals.length < 2) {
  console.error('usage: node chat.mjs BUNDLE_DIR "question" [--max-new-tokens N] [--threads N] [--json]');
  process.exit(2);
}
const [bundleArg, question] = positionals;
const bundle = path.resolve(bundleArg);

env.allowRemoteModels = false; // never reach for a hub: the folder is the model
env.localModelPath = path.dirname(bundle) + path.sep;
const modelId = path.basename(bundle);

const sessionOptions = opts.threads ? { intraOpNumThreads: Number(opts.threads), interOpNumThreads: 1 } : {};
const tokenizer = await AutoTokenizer.from_pretrained(modelId);
const model = await AutoModelForCausalLM.from_pretrained(modelId, { device: "cpu", session_options: sessionOptions });

const inputs = tokenizer.apply_chat_template([{ role: "user", content: question }], {
  add_generation_prompt: true,
  return_dict: true,
});

// Time every streamed token: the first one closes prefill, the rest are decode steps.
const stamps = [];
const streamer = new TextStreamer(tokenizer, {
  skip_prompt: true,
  skip_special_tokens: true,
  callback_function: (text) => { if (!opts.json) process.stdout.write(text); },
  token_callback_function: () => stamps.push(performance.now()),
});
const t0 = performance.now();
const out = await model.generate({
  ...inputs,
  max_new_tokens: Number(opts["max-new-tokens"]),
  do_sample: false,
  streamer,
});
const promptLen = inputs.input_ids.dims[1];
const newIds = Array.from(out[0].data.slice(promptLen), Number);
const eos = [model.generation_config.eos_token_id].flat();
const stopped = newIds.length > 0 && eos.includes(newIds.at(-1));
const decodeSteps = stamps.length - 1;
const decodeTokS = decodeSteps > 0 ? (1000 * decodeSteps) / (stamps.at(-1) - stamps[0]) : null;
const result = {
  answer: tokenizer.decode(newIds, { skip_special_tokens: true }).trim(),
  tokens: newIds.length,
  stopped_at_eos: stopped,
  last_token: tokenizer.decode(newIds.slice(-1), { skip_special_tokens: false }),
  ttft_ms: stamps.length ? Math.round(stamps[0] - t0) : null,
  decode_tok_s: decodeTokS && Math.round(decodeTokS * 10) / 10,
  threads: opts.threads ? Number(opts.threads) : null,
};
if (opts.json) {
  console.log(JSON.stringify(result));
} else {
  console.log(`\n[${result.tokens} tokens, ${result.decode_tok_s} tok/s decode, ${stopped ? "stopped at " + result.last_token : "hit max-new-tokens"}]`);
}
