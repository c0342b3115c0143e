#!/usr/bin/env node
// Serve the chat page, its local transformers.js / onnxruntime-web files and smolship ONNX bundles on 127.0.0.1.
//
//   node serve.mjs [--port 8080] [BUNDLE_DIR ...]     (no bundle given: every out/onnx-* folder of the repo)
//
// No dependencies beyond Node. Routes:
//   /                    index.html, app.js, style.css (this folder)
//   /vendor/transformers/  node_modules/@huggingface/transformers/dist (transformers.js bundles onnxruntime-web)
//   /vendor/ort/           node_modules/onnxruntime-web/dist (the .wasm / .mjs files, so nothing comes from a CDN)
//   /models/index.json     the bundles served, with their manifest figures
//   /models/<name>/...     each bundle folder, unchanged
// Every response carries COOP/COEP headers: cross-origin isolation is what lets onnxruntime-web use
// SharedArrayBuffer, i.e. more than one WASM thread.
import { createReadStream, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODULES = path.join(HERE, "node_modules");
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png",
};

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: { port: { type: "string", default: "8080" }, host: { type: "string", default: "127.0.0.1" } },
});

function findBundles(dirs) {
  if (dirs.length === 0) {
    const out = path.resolve(HERE, "..", "..", "out");
    dirs = existsSync(out) ? readdirSync(out).filter((n) => n.startsWith("onnx-")).map((n) => path.join(out, n)) : [];
  }
  const bundles = new Map();
  for (const dir of dirs.map((d) => path.resolve(d))) {
    if (!existsSync(path.join(dir, "config.json"))) {
      console.error(`skipping ${dir}: no config.json (export it with smolship export --target onnx)`);
      continue;
    }
    bundles.set(path.basename(dir), dir);
  }
  return bundles;
}

function summary(name, dir) {
  // The figures the page shows: recipe, model size, validated parity and speed (from manifest.json).
  const file = path.join(dir, "manifest.json");
  const m = existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : {};
  const files = m.files ?? {};
  const modelFiles = new Set(m.model_files ?? []);
  const bytes = Object.entries(files)
    .filter(([rel]) => modelFiles.has(rel.split("/")[0]))
    .reduce((a, [, f]) => a + f.bytes, 0);
  const v = m.validation ?? {};
  const config = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  return {
    name,
    source: m.source?.name ?? null,
    recipe: m.quant?.recipe ?? null,
    dtype: config["transformers.js_config"]?.dtype ?? null,
    size_mb: m.size_mb ?? v.size_mb ?? (bytes ? Math.round(bytes / 1e5) / 10 : null),
    kld_mean: v.kld_mean ?? null,
    top1_agreement: v.top1_agreement ?? null,
    decode_tok_s: v.decode_tok_s ?? null,
    eval_tokens: v.eval_tokens ?? null,
    stop_ids: m.tokenizer?.stop_ids ?? null,
  };
}

function resolveInside(root, rel) {
  const full = path.resolve(root, "." + path.sep + rel);
  return full === root || full.startsWith(root + path.sep) ? full : null; // no ../ escapes
}

const bundles = findBundles(positionals);
const routes = [
  ["/vendor/transformers/", path.join(MODULES, "@huggingface", "transformers", "dist")],
  ["/vendor/ort/", path.join(MODULES, "onnxruntime-web", "dist")],
];

const server = createServer((req, res) => {
  const headers = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cache-Control": "no-store",
  };
  const url = new URL(req.url, "http://localhost");
  const p = decodeURIComponent(url.pathname);
  let file = null;
  if (p === "/models/index.json") {
    const body = JSON.stringify([...bundles].map(([name, dir]) => summary(name, dir)));
    res.writeHead(200, { ...headers, "Content-Type": TYPES[".json"] });
    res.end(body);
    return;
  }
  if (p.startsWith("/models/")) {
    const [name, ...rest] = p.slice("/models/".length).split("/");
    if (bundles.has(name)) file = resolveInside(bundles.get(name), rest.join("/"));
  } else {
    const route = routes.find(([prefix]) => p.startsWith(prefix));
    file = route ? resolveInside(route[1], p.slice(route[0].length)) : resolveInside(HERE, p === "/" ? "index.html" : p.slice(1));
    if (file && !route && file.startsWith(MODULES)) file = null; // only the two vendor folders are public
  }
  if (!file || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404, { ...headers, "Content-Type": "text/plain" });
    res.end("not found\n");
    return;
  }
  res.writeHead(200, {
    ...headers,
    "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
    "Content-Length": statSync(file).size,
  });
  createReadStream(file).pipe(res);
});

server.listen(Number(opts.port), opts.host, () => {
  const { port } = server.address();
  console.log(`smolship web chat: http://${opts.host}:${port}/  (bundles: ${[...bundles.keys()].join(", ") || "none"})`);
});
