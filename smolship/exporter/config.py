"""Llama-architecture hyper-parameters as one frozen dataclass, plus the published SmolLM2 configs.

The presets mirror the config.json files of HuggingFaceTB/SmolLM2-{135M,360M,1.7B}; they are used
for `random:` models (tests, scaling benchmarks) when the real weights are not at hand.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
                raise ValueError(f"{f.name}={v!r} must be a positive integer")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < float("inf")):
                raise ValueError(f"{f.name}={v!r} must be a positive finite number")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def n_params(self) -> int:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        """Read a transformers LlamaConfig dict (config.json)."""
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def to_hf(self) -> dict:
        """The equivalent transformers config.json (used to cross-check against LlamaForCausalLM)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",
        }


def read_hf_config(path: Path) -> tuple[dict, LlamaConfig]:
    """A Hugging Face config.json -> (raw dict, LlamaConfig); anything malformed is a SmolshipError."""
    from smolship.errors import SmolshipError

    def bad(why: str) -> SmolshipError:
        return SmolshipError(f"'{path}' is not a usable config.json: {why}.",
                             "Re-download the model folder, or fix config.json (a transformers LlamaConfig).")
    try:
        hf = json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError / UnicodeDecodeError are ValueErrors
        raise bad(f"not JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(hf, dict):
        raise bad(f"it holds a JSON {type(hf).__name__}, not an object")
    archs = hf.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else "?"
    if hf.get("model_type") != "llama" or arch != "LlamaForCausalLM":
        raise SmolshipError(
            f"'{Path(path).parent}' holds a '{hf.get('model_type')}' model ({arch}); smolship exports Llama-architecture decoders only.",
            "Pass a LlamaForCausalLM checkpoint such as HuggingFaceTB/SmolLM2-360M-Instruct.",
        )
    try:
        return hf, LlamaConfig.from_hf(hf)
    except KeyError as e:
        raise bad(f"the key {e} is missing") from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise bad(f"{type(e).__name__}: {str(e)[:200]}") from None


# Published SmolLM2 configs (all tied, head_dim 64, vocab 49152).
PRESETS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(),
    "smollm2-360m": LlamaConfig(
        hidden_size=960, intermediate_size=2560, num_layers=32, num_heads=15, num_kv_heads=5
    ),
    "smollm2-1.7b": LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=32, num_kv_heads=32,
        rope_theta=130000.0,
    ),
    # Tiny config for the fast test suite: same vocabulary so the real tokenizer works with it.
    "tiny": LlamaConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        max_position_embeddings=512,
    ),
}
