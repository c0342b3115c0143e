"""ExecuTorch's C++ LLM runner (what Android's LlmModule and iOS's TextRunner wrap), in a chosen runtime build.

The apps do not run smolship's loop: they hand a rendered prompt and a GenerationConfig (echo, temperature,
seq_len, max_new_tokens) to this runner. `generate` runs it with an app's settings, in this Python or in
another runtime version's (a `Platform`), and returns the pieces the app's callback would receive.
Run as a module it is the other side: JSON arguments on argv, one JSON result on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def generate_here(pte: str, tokenizer: str, prompt: str, **config) -> dict:
    """Pieces and stats from TextLLMRunner in this process; a refusal (e.g. prompt past seq_len) is `error`."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (custom_sdpa / update_cache)
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed::embedding_*: the 8-bit embedding)
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from importlib.metadata import version

    pieces, stats = [], []
    out = {"executorch": version("executorch"), "pieces": pieces, "stats": None, "error": None}
    try:
        runner = TextLLMRunner(pte, tokenizer)
        runner.generate(prompt, GenerationConfig(**config), pieces.append, stats.append)
    except Exception as e:  # the runner's refusal is what the app sees; report it, don't crash the caller
        out["error"] = f"{type(e).__name__}: {e}"
    if stats:
        s = stats[-1]
        out["stats"] = {"num_prompt_tokens": s.num_prompt_tokens, "num_generated_tokens": s.num_generated_tokens}
    return out


def generate(bundle: Path, prompt: str, platform=None, **config) -> dict:
    """TextLLMRunner over the bundle's model.pte + tokenizer.json with GenerationConfig(**config)."""
    pte, tok = str(Path(bundle) / "model.pte"), str(Path(bundle) / "tokenizer.json")
    if platform is None:
        return generate_here(pte, tok, prompt, **config)
    args = json.dumps({"pte": pte, "tokenizer": tok, "prompt": prompt, "config": config})
    done = subprocess.run([*platform.argv, "-m", "smolship.validation.text_runner", args],
                          capture_output=True, env=platform.env, timeout=1800)
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"TextLLMRunner on {platform.label} failed: {' | '.join(tail)}")
    return json.loads(lines[-1])


def main() -> None:
    a = json.loads(sys.argv[1])
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the runner's own prints go to stderr; stdout carries the one JSON line
    result = generate_here(a["pte"], a["tokenizer"], a["prompt"], **a["config"])
    out.write(json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
