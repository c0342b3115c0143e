"""Why the int4 bundle decodes at ~1-2 tok/s in the browser: one decode matmul per weight format in onnxruntime-web.

One 576 x 1536 matmul (a SmolLM2-135M MLP shape) at batch 1, in onnxruntime-web's WASM backend run by Node
(the same .wasm the page loads), 1 thread, median of 50 calls after 5 warm-up calls:
* fp32 MatMul;
* MatMulNBits 4-bit (accuracy level 4 and 0) and 8-bit: what our ONNX bundles hold;
* DynamicQuantizeMatMul int8 (MLAS's WASM QGEMM);
* DequantizeLinear (int4, blocks of 32) -> MatMul, with ORT's defaults and with `session.disable_quant_qdq=1`,
  which lets constant folding turn the DequantizeLinear into an fp32 initializer at load.

    python -m benchmarks.wasm_matmul                    # bench-results/wasm_matmul.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)

K, N, BLOCK = 576, 1536, 32
ORT_WEB = ROOT / "examples/web/node_modules/onnxruntime-web/dist/ort.node.min.mjs"

NODE = """
import * as ort from %(ort)s;
import fs from 'fs';
ort.env.wasm.numThreads = 1;
const cases = %(cases)s, out = {};
for (const [name, file, extra] of cases) {
  const s = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(file)), {executionProviders: ['wasm'], extra});
  const x = new ort.Tensor('float32', new Float32Array(%(k)d).fill(0.5), [1, 1, %(k)d]);
  for (let i = 0; i < 5; i++) await s.run({x});
  const times = [];
  for (let i = 0; i < 50; i++) { const t0 = performance.now(); await s.run({x}); times.push(performance.now() - t0); }
  times.sort((a, b) => a - b);
  out[name] = Math.round(times[25] * 1000);
}
console.log(JSON.stringify(out));
"""


def graphs(folder: Path) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, N])

    def save(name: str, nodes, inits, opset: int = 17) -> Path:
        model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                                  opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        onnx.save(model, folder / f"{name}.onnx")
        return folder / f"{name}.onnx"

    out = {"fp32 MatMul": save("fp32", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                               [numpy_helper.from_array(rng.random((K, N), dtype=np.float32), "W")])}
    for bits, acc in ((4, 4), (4, 0), (8, 4)):
        b = rng.integers(0, 256, (N, K // BLOCK, BLOCK * bits // 8), dtype=np.uint8)
        s = rng.random(N * K // BLOCK, dtype=np.float32) * 0.01
        node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N, bits=bits,
                                block_size=BLOCK, accuracy_level=acc)
        out[f"MatMulNBits {bits}-bit acc{acc}"] = save(f"nbits{bits}_acc{acc}", [node], [
            numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "S")])
    out["DynamicQuantizeMatMul int8"] = save("dqmm", [helper.make_node("DynamicQuantizeMatMul", ["x", "B", "S"], ["y"],
                                                                       domain="com.microsoft")],
                                             [numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), "B"),
                                              numpy_helper.from_array(rng.random(N, dtype=np.float32) * 0.01, "S")])
    w4 = helper.make_tensor("W4", TensorProto.INT4, [K, N], rng.integers(-8, 8, K * N).tolist())
    s4 = numpy_helper.from_array(rng.random((K // BLOCK, N), dtype=np.float32) * 0.01, "S4")
    out["DequantizeLinear int4 -> MatMul"] = save("dq4", [
        helper.make_node("DequantizeLinear", ["W4", "S4"], ["W"], axis=0, block_size=BLOCK),
        helper.make_node("MatMul", ["x", "W"], ["y"])], [w4, s4], opset=21)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ort-web", type=Path, default=ORT_WEB,
                    help="ort.node.min.mjs of the onnxruntime-web to measure (default: the web example's pinned one)")
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    if not args.ort_web.is_file():
        sys.exit(f"{args.ort_web} is missing: run `make setup-js` (bash examples/setup-js.sh) first")
    version = json.loads((args.ort_web.parent.parent / "package.json").read_text())["version"]
    with tempfile.TemporaryDirectory() as tmp:
        files = graphs(Path(tmp))
        cases = [[name, str(f), {}] for name, f in files.items()]
        cases.append(["DequantizeLinear int4 -> MatMul, disable_quant_qdq=1", str(files["DequantizeLinear int4 -> MatMul"]),
                      {"session": {"disable_quant_qdq": "1"}}])
        script = Path(tmp) / "bench.mjs"
        script.write_text(NODE % {"ort": json.dumps(str(args.ort_web)), "cases": json.dumps(cases), "k": K})
        proc = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True)
    us = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [{"graph": name, "us_per_call": v, "vs_fp32": round(v / us["fp32 MatMul"], 2)} for name, v in us.items()]
    for r in rows:
        print(f"{r['graph']:55s} {r['us_per_call']:7d} us  x{r['vs_fp32']}")
    write(out_file, envelope(SCRIPT, {"onnxruntime_web": version, "k": K, "n": N, "block": BLOCK, "threads": 1, "calls": 50},
                             rows, args.variant))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
