"""The off-grid test model (exporter/offgrid.py) and the 4-bit bounds each target holds on it (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smolship.errors import SmolshipError
from smolship.exporter.offgrid import canonical, parse_spec


def test_spec_parsing_and_errors():
    assert parse_spec("offgrid:smollm2-135m") == {"base": "smollm2-135m", "seed": 0, "shape": "uniform", "width": 1.0}
    opts = parse_spec("offgrid:?seed=3&shape=normal&width=0.5")
    assert opts == {"base": "smollm2-135m", "seed": 3, "shape": "normal", "width": 0.5}
    assert parse_spec(canonical(opts)) == opts
    for bad in ("offgrid:llama-7b", "offgrid:smollm2-135m?seed=x", "offgrid:?shape=cauchy", "offgrid:?width=2",
                "offgrid:?colour=red"):
        with pytest.raises(SmolshipError):
            parse_spec(bad)


def _q4_1_codes(source, name: str):
    """(codes, d, m) of a Q4_1 layer weight of the default model, in PyTorch (out, in) order."""
    from smolship.exporter.offgrid import half_steps

    t = source.gguf.raw(name)
    raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1, 20)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    assert np.allclose(half_steps(t).reshape(-1, 32)[:, 0], d[:, 0] / 2)
    return d, m


@pytest.mark.slow
def test_offgrid_weights_sit_inside_their_rounding_intervals(default_model, offgrid_model):
    """Every layer weight moved, each by at most half its block's step (+ bf16 rounding), and rounding it
    back onto the file's own Q4_1 grid gives the file's codes: a plausible original of the shipped file."""
    assert offgrid_model.source["kind"] == "offgrid" and offgrid_model.config == default_model.config
    name = "layers.3.mlp.down_proj.weight"  # no Q/K row permutation: GGUF blocks are rows of 32 here
    d, m = _q4_1_codes(default_model, "blk.3.ffn_down.weight")
    w0, w1 = default_model.state_dict[name].numpy(), offgrid_model.state_dict[name].numpy()
    b0, b1 = w0.reshape(-1, 32), w1.reshape(-1, 32)
    moved = np.abs(b1 - b0)
    bf16 = np.abs(b1) * 2.0 ** -8
    assert (moved <= d / 2 + bf16 + 1e-7).all()
    assert moved.mean() > 0.2 * (d / 2).mean()  # uniform in the interval: mean |u| = 1/2 of it
    codes0 = np.rint((b0 - m) / d)
    codes1 = np.clip(np.rint((b1 - m) / d), 0, 15)
    assert (codes0 == codes1).mean() > 0.99  # the rest sit on interval edges, moved by bf16 rounding
    emb0, emb1 = default_model.state_dict["embed_tokens.weight"], offgrid_model.state_dict["embed_tokens.weight"]
    assert not torch.equal(emb0, emb1)
    for key in ("norm.weight", "layers.0.input_layernorm.weight"):  # F32 tensors keep their values (bf16-rounded)
        torch.testing.assert_close(offgrid_model.state_dict[key], default_model.state_dict[key], atol=0, rtol=2 ** -8)


@pytest.mark.slow
def test_offgrid_folder_loads_in_transformers_and_answers_paris(offgrid_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smolship.exporter.offgrid import offgrid_folder

    folder = offgrid_folder(offgrid_model.source["ref"])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt")
    out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt.shape[1]:])
    ids = offgrid_model.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    ref = offgrid_model.build(max_seq_len=64)(torch.tensor([ids]), torch.tensor([0]))[0]
    hf = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ref, hf, atol=2e-3, rtol=0)  # same weights, two implementations


# --- slow: the 4-bit bounds each target holds off the grid (figures: bench-results/offgrid_matrix.json) ----
# Each target's 4-bit-class default recipe, exported from the off-grid model and validated in its own runtime
# (Core ML on Linux: weights read back out of the package) on 1,024 eval tokens against the same folder's fp32.
# Bounds: the figure measured by benchmarks/offgrid_matrix.py (2,048 tokens; GGUF: smolship export) + ~40%; the
# issue's goal (0.035, our GGUF q4_k_m) is not reached by these kernels at 110 MB (recipes.py of each target).
OFFGRID_BOUNDS = {  # target: (recipe, kld_mean bound, measured at 2,048 tokens in bench-results/offgrid_matrix.json)
    "onnx": ("int4", 0.10, 0.0724),
    "coreml": ("w4", 0.105, 0.0749),
    "executorch": ("8da4w", 0.19, 0.1339),
    # q4_k_m with its importance matrix on held-out text: 0.0441 on 4,096 tokens (smolship export, 2026-12-02);
    # the 0.035 was measured when the imatrix still read the scored text
    "gguf": ("q4_k_m", 0.062, 0.0441),
}


@pytest.fixture(scope="session")
def offgrid_validator(offgrid_model):
    from conftest import quick_settings
    from smolship.validation.validate import Validator

    return Validator(offgrid_model, quick_settings(1024))


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(OFFGRID_BOUNDS))
def test_four_bit_default_holds_off_the_grid(target, offgrid_model, offgrid_validator, tmp_path):
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, available_targets, get_target

    recipe, bound, _measured = OFFGRID_BOUNDS[target]
    if target not in available_targets():
        pytest.skip(f"{target} is not installed")
    t = get_target(target)
    _, manifest = export_bundle(offgrid_model, target, t.recipes[recipe], tmp_path, ExportOptions(max_seq_len=512),
                                validator=offgrid_validator)
    v = manifest["validation"]
    par = v if "kld_mean" in v else v["weight_parity"]
    assert manifest["size_mb"] <= 110, manifest["size_mb"]
    assert par["kld_mean"] <= bound, par
    if target == "onnx":  # off the grid, quant/mixed.py's rule holds: first/last layers and every o_proj at 8 bits
        quant = manifest["target_info"]["quant"]["matmul_weights"]
        assert quant.get("int8 b64 sym rtn") == 4 * 2 + 28 + 1 and quant.get("int4 b32 asym offset-search") == 4 * 28 - 28, quant
    calibration = manifest["target_info"]["calibration"]  # held-out text, recorded
    assert "held-out" in calibration["text"] and calibration["tokens"] > 0
