"""Activation statistics for quantization, measured in the PyTorch reference model (shared by targets).

For every matrix a decoder layer multiplies (keyed by the fused names of the ONNX graph: qkv_proj,
o_proj, gate_up_proj, down_proj, whose inputs are those of q_proj, o_proj, gate_proj, down_proj), the inputs seen
on calibration text give `importance` = mean x^2 per input channel (weights the rounding error of
the `mse` grid search) and `hessian` = X^T X / n (GPTQ). The text defaults to the shipped eval set,
so the int4 recipe is tuned on the same kind of text parity is measured on; a user can pass
their own with ExportOptions.calibration_text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# fused-graph weight -> the reference module whose input it multiplies
_SOURCES = {"qkv_proj": "self_attn.q_proj", "o_proj": "self_attn.o_proj",
            "gate_up_proj": "mlp.gate_proj", "down_proj": "mlp.down_proj"}


@dataclass
class Calibration:
    importance: dict[str, torch.Tensor]  # name -> (K,)
    hessian: dict[str, torch.Tensor]  # name -> (K, K)
    tokens: int


def calibration_ids(source, text: str | None, max_tokens: int, doc_tokens: int = 256,
                    from_end: bool = True) -> list[list[int]]:
    """Token sequences to calibrate on: the user's text, else the shipped eval set read from its end.

    Validation reads the eval set from its start (4,096 tokens by default, about the first 20 of 50
    documents), so calibrating from the end keeps the default parity figures on held-out text.
    from_end=False reads it from the start (the ONNX int8 recipe, see onnx/target.py)."""
    tok = source.tokenizer
    if text:
        ids = tok.encode(text)
        return [ids[i:i + doc_tokens] for i in range(0, min(len(ids), max_tokens), doc_tokens)]
    from smolship.validation.evalset import load_eval

    docs = [list(d.ids) for d in load_eval(tok, max_doc_tokens=doc_tokens)]
    out, total = [], 0
    for ids in (reversed(docs) if from_end else docs):
        if total >= max_tokens:
            break
        out.append(ids[: max_tokens - total])
        total += len(out[-1])
    return out


@torch.inference_mode()
def collect(source, sequences: list[list[int]], want_hessian: bool) -> Calibration:
    model = source.build(max_seq_len=max(len(s) for s in sequences) + 1)
    sums: dict[str, torch.Tensor] = {}
    grams: dict[str, torch.Tensor] = {}
    count = 0
    hooks = []

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # (T, K)
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            if want_hessian:
                grams[name] = grams.get(name, 0) + x.t() @ x
        return hook

    for i, layer in enumerate(model.layers):
        for fused, ref in _SOURCES.items():
            hooks.append(layer.get_submodule(ref).register_forward_pre_hook(hook_for(f"layers.{i}.{fused}")))
    hooks.append(model.lm_head.register_forward_pre_hook(hook_for("lm_head")))
    try:
        for seq in sequences:
            model(torch.tensor([seq]), torch.tensor([0]))
            count += len(seq)
    finally:
        for h in hooks:
            h.remove()
    importance = {k: (v / count).float() for k, v in sums.items()}
    hessian = {k: (v / count).float() for k, v in grams.items()}
    return Calibration(importance, hessian, count)


def smoothing_scales(calib: Calibration, state_dict: dict[str, torch.Tensor], num_layers: int,
                     alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """SmoothQuant scales s = rms(x)^alpha / max|W|^(1-alpha) per input channel of the norm-fed matrices."""
    packed = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
    scales = {}
    for i in range(num_layers):
        for fused, parts in packed.items():
            name = f"layers.{i}.{fused}"
            w = torch.cat([state_dict[f"layers.{i}.{p}.weight"] for p in parts])  # (N, K)
            act = calib.importance[name].sqrt().clamp(min=1e-6)
            wmax = w.abs().amax(0).clamp(min=1e-6)
            s = act.pow(alpha) / wmax.pow(1 - alpha)
            scales[name] = (s / s.log().mean().exp()).float()  # geometric mean 1: weights keep their scale
    return scales
