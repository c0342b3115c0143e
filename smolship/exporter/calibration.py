"""Calibration text (one policy for every target) and the activation statistics targets ask for.

Policy (`calibration_set`): the user's `ExportOptions.calibration_text` when given; else the last
`HELD_OUT_DOCS` documents of the shipped eval set. Validation reads the eval set from its start and the
CLI's default (`--eval-tokens 4096`) ends well before those documents, so calibration never sees the text
default parity scores (tests/test_quant_core.py asserts it). Every target records `CalibrationSet.record`
(what text, which documents, how many tokens) in its manifest's target_info.

`collect` measures, for every matrix a decoder layer multiplies (keyed by the fused names of the ONNX
graph: qkv_proj, o_proj, gate_up_proj, down_proj, whose inputs are those of q_proj, o_proj, gate_proj,
down_proj) and the lm_head, `importance` = mean x^2 per input channel and `hessian` = X^T X / n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smolship.evalset import load_eval
from smolship.exporter.naming import FUSED, FUSED_OF, NORM_FED
from smolship.quant.stats import Stats, collect as collect_stats

CALIBRATION_TOKENS = 4096  # what ONNX, ExecuTorch and Core ML calibrate on (the held-out documents hold ~3,700)
HELD_OUT_DOCS = 16  # the eval set's last documents: never scored at the default 4,096 eval tokens
Calibration = Stats  # importance, hessian, tokens


@dataclass
class CalibrationSet:
    sequences: list[list[int]]
    record: dict  # for the manifest: {"text", "documents", "tokens"}


def calibration_set(source, text: str | None, max_tokens: int = CALIBRATION_TOKENS, doc_tokens: int = 256) -> CalibrationSet:
    """Token sequences to calibrate on: `text` cut into `doc_tokens` pieces, else held-out eval documents.

    The held-out documents are read from the end of the eval set (the last HELD_OUT_DOCS, newest last),
    each cut to `doc_tokens`, until `max_tokens`."""
    tok = source.tokenizer
    if text:
        ids = tok.encode(text)[:max_tokens]
        seqs = [ids[i:i + doc_tokens] for i in range(0, len(ids), doc_tokens) if len(ids[i:i + doc_tokens]) > 1]
        return CalibrationSet(seqs, {"text": "ExportOptions.calibration_text", "tokens": sum(map(len, seqs))})
    docs = held_out_docs(tok, doc_tokens)
    seqs, names, total = [], [], 0
    for doc in reversed(docs):
        if total >= max_tokens:
            break
        seqs.append(list(doc.ids[: max_tokens - total]))
        names.append(doc.id)
        total += len(seqs[-1])
    return CalibrationSet(seqs, {"text": f"smolship eval set, held-out last {HELD_OUT_DOCS} documents",
                                 "documents": names, "tokens": total})


def held_out_docs(tokenizer, doc_tokens: int = 256):
    """The eval documents calibration may read (validation at its default window never does)."""
    return load_eval(tokenizer, max_doc_tokens=doc_tokens)[-HELD_OUT_DOCS:]


def stats_key(param: str) -> str | None:
    """The `collect` key whose input a state-dict weight multiplies ("layers.3.mlp.up_proj.weight" ->
    "layers.3.gate_up_proj"); None for weights no statistic covers."""
    if param == "lm_head.weight":
        return "lm_head"
    layer, _, rest = param.removeprefix("layers.").partition(".")
    fused = FUSED_OF.get(rest.removesuffix(".weight"))
    return f"layers.{layer}.{fused}" if param.startswith("layers.") and fused else None


def collect(source, sequences: list[list[int]], want_hessian: bool, use_cache: bool = True) -> Stats:
    """Importance (and Hessians) of every fused layer matrix and the lm_head on `sequences`; every target
    that asks for the same ones of the same model shares one computation (quant.stats.collect's cache)."""
    model = source.build(max_seq_len=max(len(s) for s in sequences) + 1)
    inputs = {"lm_head": "lm_head"}
    for i in range(source.config.num_layers):
        for fused, parts in FUSED.items():  # a fused matrix's input is its first part's
            inputs[f"layers.{i}.{fused}"] = f"layers.{i}.{parts[0]}"
    return collect_stats(model, sequences, inputs, hessian_keys=inputs if want_hessian else (), use_cache=use_cache)


def smoothing_scales(calib: Stats, state_dict: dict[str, torch.Tensor], num_layers: int,
                     alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """SmoothQuant scales s = rms(x)^alpha / max|W|^(1-alpha) per input channel of the norm-fed matrices."""
    scales = {}
    for i in range(num_layers):
        for fused in NORM_FED:
            name = f"layers.{i}.{fused}"
            w = torch.cat([state_dict[f"layers.{i}.{p}.weight"] for p in FUSED[fused]])  # (N, K)
            act = calib.importance[name].sqrt().clamp(min=1e-6)
            wmax = w.abs().amax(0).clamp(min=1e-6)
            s = act.pow(alpha) / wmax.pow(1 - alpha)
            scales[name] = (s / s.log().mean().exp()).float()  # geometric mean 1: weights keep their scale
    return scales
