"""Decode tokens/s of one ONNX bundle in every client that loads it: onnxruntime-genai (Python),
transformers.js in Node (onnxruntime-node) and in headless chromium (onnxruntime-web WASM), 1 and 2 threads.

The clients run interleaved, round after round, on the same greedy prompt, so a machine shared with
other work slows them alike; the median over rounds is reported. Decode tok/s = (tokens - 1) / time
from the first generated token to the last (prefill excluded), as each client streams them.

    .venv/bin/python -m benchmarks.js_clients out/onnx-int4 --rounds 3           # bench-results/js_clients.json
Needs `bash examples/setup-js.sh` and the web extra (playwright). Rows: one per (client, round).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)
PROMPT = "Write a long story about a robot who learns to paint."


def genai_decode(bundle: Path, threads: int, max_new: int) -> dict:
    import onnxruntime_genai as og

    from smolship.targets.onnx import genai_loop

    model = genai_loop.load_model(bundle, threads)
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(json.dumps([{"role": "user", "content": PROMPT}]), add_generation_prompt=True)
    tokens, stamps = genai_loop.greedy(model, list(tok.encode(prompt)), max_new)
    n = len(stamps) - 1
    return {"tokens": len(tokens), "decode_tok_s": n / (stamps[-1] - stamps[0]) if n > 0 else None}


def node_decode(bundle: Path, threads: int, max_new: int) -> dict:
    out = subprocess.run(["node", str(ROOT / "examples/node/chat.mjs"), str(bundle), PROMPT, "--json",
                          "--max-new-tokens", str(max_new), "--threads", str(threads)],
                         capture_output=True, text=True, check=True, timeout=600)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"tokens": got["tokens"], "decode_tok_s": got["decode_tok_s"]}


class Browser:
    """serve.mjs + headless Debian chromium; one page load per thread count (WASM fixes it at start)."""

    def __init__(self, bundle: Path):
        from playwright.sync_api import sync_playwright

        self.bundle = bundle
        self.server = subprocess.Popen(["node", str(ROOT / "examples/web/serve.mjs"), "--port", "0", str(bundle)],
                                       stdout=subprocess.PIPE, text=True)
        self.base = re.search(r"http://127\.0\.0\.1:\d+/", self.server.stdout.readline()).group(0)
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                               args=["--no-sandbox"])
        self.pages: dict[int, object] = {}

    def decode(self, threads: int, max_new: int) -> dict:
        if threads not in self.pages:
            page = self.browser.new_page()
            page.goto(f"{self.base}?bundle={self.bundle.name}&threads={threads}")
            page.wait_for_function("() => window.smolshipDebug?.ready", timeout=300_000)
            self.pages[threads] = page
        page = self.pages[threads]
        page.evaluate("document.querySelector('#log').innerHTML = ''")
        run = page.evaluate("([q, n]) => smolshipDebug.ask(q, n)", [PROMPT, max_new])
        page.evaluate("smolshipDebug.lastRun = null")
        return {"tokens": run["tokens"], "decode_tok_s": run["decode_tok_s"]}

    def close(self):
        self.browser.close()
        self.pw.stop()
        self.server.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    bundle = args.bundle.resolve()
    if not (bundle / "manifest.json").is_file():
        ap.error(f"{args.bundle} is not a bundle (no manifest.json): export one with `smolship export --target onnx`")
    missing = [f for f in ("examples/node/node_modules", "examples/web/node_modules")
               if not (ROOT / f).exists()] + [exe for exe in ("node", "chromium") if not shutil.which(exe)]
    if missing:
        sys.exit(f"js_clients needs node, chromium and the examples' npm packages (missing: {', '.join(missing)}): "
                 "run `make setup-js` (bash examples/setup-js.sh).")
    browser = Browser(bundle)
    clients = {}
    for t in args.threads:
        clients[f"onnxruntime-genai {t}t"] = lambda t=t: genai_decode(bundle, t, args.max_new_tokens)
        clients[f"transformers.js node {t}t"] = lambda t=t: node_decode(bundle, t, args.max_new_tokens)
        clients[f"transformers.js chromium wasm {t}t"] = lambda t=t: browser.decode(t, args.max_new_tokens)
    runs: dict[str, list[dict]] = {k: [] for k in clients}
    try:
        for r in range(args.rounds):
            for name, fn in clients.items():
                runs[name].append(fn())
                print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    finally:
        browser.close()
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = [{"client": name, "round": i + 1, **run} for name, v in runs.items() for i, run in enumerate(v)]
    result = envelope(SCRIPT, {"bundle": str(args.bundle), "recipe": manifest["quant"]["recipe"], "prompt": PROMPT,
                               "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
                               "order": "clients interleaved round by round"},
                      rows, args.variant, median_decode_tok_s={k: round(statistics.median(x["decode_tok_s"] for x in v), 1)
                                                               for k, v in runs.items()})
    print(json.dumps(result["median_decode_tok_s"], indent=2))
    write(out_file, result)
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
