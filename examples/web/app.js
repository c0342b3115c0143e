// The chat page: a smolship ONNX bundle in transformers.js on onnxruntime-web (WASM), all files from this server.
//
// URL parameters (the setup form submits them): ?bundle=onnx-int4&threads=2. onnxruntime-web fixes its
// thread count when the WASM module starts, so a new thread count means a page load.
import { AutoModelForCausalLM, AutoTokenizer, Tensor, TextStreamer, env } from "/vendor/transformers/transformers.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const threads = Number(params.get("threads") ?? 2);

env.allowRemoteModels = false; // the bundle folder is the model; never reach for a hub
env.allowLocalModels = true;
env.localModelPath = "/models/";
env.useBrowserCache = false; // a re-exported bundle must not be answered from an old cache
env.backends.onnx.wasm.wasmPaths = { // served from node_modules/onnxruntime-web, not a CDN
  mjs: "/vendor/ort/ort-wasm-simd-threaded.asyncify.mjs",
  wasm: "/vendor/ort/ort-wasm-simd-threaded.asyncify.wasm",
};
env.backends.onnx.wasm.numThreads = threads; // > 1 needs crossOriginIsolated (serve.mjs sends COOP/COEP)

const state = { tokenizer: null, model: null, info: null, messages: [], busy: false };

function setStatus(text, phase) {
  $("status").textContent = text;
  $("status").dataset.state = phase;
}

function showFigures(info) {
  const fmt = (v, d) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(d) : v);
  const rows = [
    ["recipe", info.recipe ?? info.dtype], ["size", `${fmt(info.size_mb, 1)} MB`],
    ["kld_mean (validated)", fmt(info.kld_mean, 4)], ["top-1 agreement", fmt(info.top1_agreement, 3)],
    ["decode tok/s (native)", fmt(info.decode_tok_s, 1)],
  ];
  $("figures").innerHTML = rows.map(([k, v]) => `<div><dt>${k}</dt><dd>${v}</dd></div>`).join("");
}

async function load(name) {
  setStatus(`loading ${name} (${threads} thread${threads > 1 ? "s" : ""}, cross-origin isolated: ${crossOriginIsolated})…`, "loading");
  const t0 = performance.now();
  state.info = (await (await fetch("/models/index.json")).json()).find((b) => b.name === name);
  showFigures(state.info);
  state.tokenizer = await AutoTokenizer.from_pretrained(name);
  // dtype from config.json. disable_quant_qdq: onnxruntime-web has no fast kernel for quantized matmuls
  // (MatMulNBits runs 10-20x slower than an fp32 MatMul in WASM), so the bundle's DequantizeLinear weights are
  // folded into fp32 once, at load (more memory, ~4x the file's weight bytes; native ORT fuses them instead).
  state.model = await AutoModelForCausalLM.from_pretrained(name, {
    device: "wasm", session_options: { extra: { session: { disable_quant_qdq: "1" } } },
  });
  state.messages = [];
  $("prompt").disabled = $("send").disabled = false;
  setStatus(`${name} loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s · ${threads} WASM thread(s)`, "ready");
  window.smolshipDebug.ready = true;
}

function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = `turn ${role}`;
  div.textContent = text;
  $("log").append(div);
  return div;
}

async function ask(question, maxNewTokens = 128) {
  const { tokenizer, model } = state;
  state.busy = true;
  $("send").disabled = true;
  addTurn("user", question);
  const answer = addTurn("assistant", "");
  state.messages.push({ role: "user", content: question });
  const inputs = tokenizer.apply_chat_template(state.messages, { add_generation_prompt: true, return_dict: true });
  const stamps = [];
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    callback_function: (text) => { answer.textContent += text; },
    token_callback_function: () => {
      stamps.push(performance.now());
      const n = stamps.length - 1;
      if (n > 0) setStatus(`generating… ${n + 1} tokens · ${(1000 * n / (stamps[n] - stamps[0])).toFixed(1)} tok/s decode`, "generating");
    },
  });
  setStatus("prefill…", "generating");
  const t0 = performance.now();
  const out = await model.generate({ ...inputs, max_new_tokens: maxNewTokens, do_sample: false, streamer });
  const promptLen = inputs.input_ids.dims[1];
  const ids = Array.from(out[0].data.slice(promptLen), Number);
  const eos = [model.generation_config.eos_token_id].flat().map(Number);
  const steps = stamps.length - 1;
  const run = {
    text: tokenizer.decode(ids, { skip_special_tokens: true }).trim(),
    tokens: ids.length,
    stopped_at_eos: ids.length > 0 && eos.includes(ids.at(-1)),
    last_token: tokenizer.decode(ids.slice(-1), { skip_special_tokens: false }),
    ttft_ms: stamps.length ? stamps[0] - t0 : null,
    decode_tok_s: steps > 0 ? (1000 * steps) / (stamps.at(-1) - stamps[0]) : null,
    threads,
  };
  state.messages.push({ role: "assistant", content: run.text });
  window.smolshipDebug.lastRun = run;
  setStatus(`${run.tokens} tokens · ${run.decode_tok_s?.toFixed(1) ?? "–"} tok/s decode · first token ${run.ttft_ms?.toFixed(0)} ms · `
    + (run.stopped_at_eos ? `stopped at ${run.last_token}` : "hit the token limit"), "done");
  state.busy = false;
  $("send").disabled = false;
  return run;
}

function toBase64(f32) {
  const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// Logits of a fixed token sequence through the bundle's own KV-cache loop in this browser: prefill the
// first `prefill` tokens in one call, then one call per token feeding the returned cache back, as
// transformers.js' generate does (and as smolship's validation drives every runtime). Returns the
// shape; `logitRows(start, count)` then hands out float32 rows as base64 in pieces a test can fetch.
let lastLogits = null;
let lastVocab = 0;
async function logits(ids, prefill = 32) {
  const { model } = state;
  // No cache on the first call: transformers.js 4.x builds its own empty cache then, and calls
  // `update` on anything truthy it is given, so an empty object would fail.
  let past = undefined;
  const step = async (chunk, total) => {
    const inputs = {
      input_ids: new Tensor("int64", BigInt64Array.from(chunk.map(BigInt)), [1, chunk.length]),
      attention_mask: new Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (past) inputs.past_key_values = past;
    const out = await model(inputs);
    past = {};
    for (const [name, t] of Object.entries(out)) {
      if (name.startsWith("present")) past[name.replace("present", "past_key_values")] = t;
    }
    return out.logits; // (1, chunk, vocab)
  };
  const n0 = Math.min(prefill, ids.length);
  const first = await step(ids.slice(0, n0), n0);
  const vocab = first.dims[2];
  lastVocab = vocab;
  lastLogits = new Float32Array(ids.length * vocab);
  lastLogits.set(first.data, 0);
  for (let i = n0; i < ids.length; i++) lastLogits.set((await step([ids[i]], i + 1)).data, i * vocab);
  return { rows: ids.length, vocab };
}

function logitRows(start, count) {
  return toBase64(lastLogits.subarray(start * lastVocab, (start + count) * lastVocab));
}

window.smolshipDebug = {
  ready: false, lastRun: null, lastShape: null, threads, logitRows,
  ask: (q, n) => ask(q, n),
  logits: async (ids, prefill) => (window.smolshipDebug.lastShape = await logits(ids, prefill)),
};

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("prompt").value.trim();
  if (q && !state.busy && state.model) ask(q);
});
$("setup").addEventListener("submit", (e) => {
  e.preventDefault();
  location.search = new URLSearchParams({ bundle: $("bundle").value, threads: $("threads").value }).toString();
});

const bundles = await (await fetch("/models/index.json")).json();
$("bundle").innerHTML = bundles.map((b) => `<option>${b.name}</option>`).join("");
$("threads").value = String(threads);
if (!bundles.length) setStatus("no bundle served: node serve.mjs path/to/onnx-int4", "empty");
const wanted = params.get("bundle");
if (wanted && bundles.some((b) => b.name === wanted)) {
  $("bundle").value = wanted;
  load(wanted).catch((err) => setStatus(`failed: ${err.message ?? err}`, "error"));
}
