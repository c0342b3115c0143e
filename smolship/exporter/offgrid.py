"""The off-grid test model: the default model with every weight moved inside its own GGUF rounding interval.

Why (issue 19): the default model is a Q4_1 GGUF, so each layer weight already sits on a block-asymmetric
4-bit grid (``w = d*q + m`` per block of 32) and any recipe that reproduces that grid looks perfect. A user's
bf16 model is on no grid. This builds a plausible bf16 original of the shipped file: each weight of a Q4_1
block moves by ``u * width * d/2`` (the embedding's Q8_0 blocks likewise with their own ``d``), ``u`` drawn
seeded from [-1, 1] (``shape=uniform``) or a normal of std 1/2 clipped to [-1, 1] (``shape=normal``); F32
tensors (norms) are kept. Rounding the result to nearest on the file's own grid gives the file back
(width <= 1), so it still answers like the default model ("Paris").

Spec: ``offgrid:smollm2-135m?seed=0&shape=uniform&width=1`` (every key optional). The model is written once
as a bf16 Hugging Face folder (config.json, model.safetensors, tokenizer files with the chat template,
generation_config.json) under smolship's cache folder (``cache.cache_root``: ``$SMOLSHIP_CACHE``, else
``$XDG_CACHE_HOME/smolship`` or ``~/.cache/smolship``) and loaded like any folder, so transformers reads the
same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from smolship.errors import SmolshipError

PREFIX = "offgrid:"
BASES = ("smollm2-135m",)  # the default model is the only base on a known grid
SHAPES = ("uniform", "normal")
BLOCK = 32
# bytes per block and the offset of its fp16 scale d, for the GGUF types the default model holds
_BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}


def parse_spec(spec: str) -> dict:
    """`offgrid:<base>?seed=..&shape=..&width=..` -> {"base", "seed", "shape", "width"} (checked)."""
    body = spec.removeprefix(PREFIX)
    base, _, query = body.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(opts) - {"seed", "shape", "width"}
    fix = "Use offgrid:smollm2-135m?seed=0&shape=uniform&width=1 (shape uniform|normal, 0 < width <= 1)."
    if (base or "smollm2-135m") not in BASES or unknown:
        raise SmolshipError(f"Unknown off-grid spec '{spec}'" + (f" (keys {sorted(unknown)})" if unknown else "") + ".", fix)
    try:
        out = {"base": base or "smollm2-135m", "seed": int(opts.get("seed", 0)),
               "shape": opts.get("shape", "uniform"), "width": float(opts.get("width", 1.0))}
    except ValueError:
        raise SmolshipError(f"Off-grid spec '{spec}' has a non-numeric seed or width.", fix) from None
    if out["shape"] not in SHAPES or not 0 < out["width"] <= 1:
        raise SmolshipError(f"Off-grid spec '{spec}': shape must be one of {SHAPES} and width in (0, 1].", fix)
    return out


def canonical(opts: dict) -> str:
    return f"{PREFIX}{opts['base']}?seed={opts['seed']}&shape={opts['shape']}&width={opts['width']:g}"


def cache_dir() -> Path:
    from smolship.cache import cache_root

    return cache_root()


def half_steps(t) -> np.ndarray:
    """Half the rounding step (d/2) of every weight of a Q4_1 / Q8_0 GGUF tensor, in (out, in) order."""
    kind = t.tensor_type.name
    if kind not in _BLOCK_BYTES:
        raise ValueError(f"{t.name}: no rounding interval for GGUF type {kind}")
    raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1, _BLOCK_BYTES[kind])
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]  # both types start with fp16 d
    shape = tuple(reversed([int(x) for x in t.shape]))
    return np.repeat(d / 2, BLOCK).reshape(shape)


def build(opts: dict, folder: Path) -> Path:
    """Write the off-grid model for `opts` into `folder` (bf16 safetensors + config + tokenizer)."""
    import torch
    from safetensors.torch import save_file

    from smolship.exporter.gguf_source import load_gguf
    from smolship.exporter.naming import ours_to_gguf, unpermute_qk
    from smolship.exporter.sources import default_model_path

    cfg, state, tok, g = load_gguf(default_model_path())
    rng = np.random.default_rng(opts["seed"])
    out = {}
    for name in sorted(state):
        w = state[name].numpy()
        t = g.raw(ours_to_gguf(name))
        if t.tensor_type.name in _BLOCK_BYTES:
            half = half_steps(t)
            if name.endswith("q_proj.weight"):
                half = unpermute_qk(half, cfg.num_heads)
            elif name.endswith("k_proj.weight"):
                half = unpermute_qk(half, cfg.num_kv_heads)
            if opts["shape"] == "uniform":
                u = rng.uniform(-1.0, 1.0, size=w.shape)
            else:
                u = np.clip(rng.normal(0.0, 0.5, size=w.shape), -1.0, 1.0)
            w = w + (u * opts["width"] * half).astype(np.float32)
        out[f"model.{name}"] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf = {**cfg.to_hf(), "torch_dtype": "bfloat16", "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
          "smolship_offgrid": canonical(opts)}
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    tok.save(folder)
    (folder / "generation_config.json").write_text(json.dumps(tok.generation_config(), indent=2))
    return folder


def offgrid_folder(spec: str) -> Path:
    """The folder holding the model of `spec`, built on first use (atomically: temp folder, then rename)."""
    opts = parse_spec(spec)
    name = f"offgrid-{opts['base']}-seed{opts['seed']}-{opts['shape']}-w{opts['width']:g}"
    folder = cache_dir() / name
    if (folder / "model.safetensors").is_file():
        return folder
    tmp = folder.with_name(f".{name}.{os.getpid()}")
    build(opts, tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_offgrid(spec: str):
    """A SourceModel for `spec`, recorded with the spec as its ref (validation rebuilds it from that)."""
    from smolship.exporter.sources import load_hf_folder

    opts = parse_spec(spec)
    source = load_hf_folder(offgrid_folder(spec))
    source.name = f"offgrid-{opts['base']}-seed{opts['seed']}-{opts['shape']}-w{opts['width']:g}"
    source.source = {**source.source, "kind": "offgrid", "ref": canonical(opts)}
    return source
