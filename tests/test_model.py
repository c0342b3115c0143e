"""The model definition: cache modes agree, the KV loop equals a full forward, and the real 135M
(and random 360M / 1.7B configs) match transformers' LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from smolship.exporter import load_model
from smolship.generate import generate
from smolship.runner import ReferenceRunner


def hf_twin(source):
    """transformers' LlamaForCausalLM holding the same tensors (no copy: built on meta, assigned)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        hf = LlamaForCausalLM(LlamaConfig(**source.config.to_hf()))
    sd = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v for k, v in source.state_dict.items()}
    if source.config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=True, assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf.config)  # rebuild the non-persistent inv_freq off meta
    return hf.eval()


def kv_loop_logits(source, ids: list[int], prefill: int) -> torch.Tensor:
    runner = ReferenceRunner.from_source(source, max_seq_len=len(ids) + 8)
    rows = [torch.from_numpy(runner.prefill(ids[:prefill]))]
    rows += [torch.from_numpy(runner.decode(t))[None] for t in ids[prefill:]]
    return torch.cat(rows)


def test_kv_loop_equals_full_forward_and_reset_forgets(tiny_model):
    ids = tiny_model.tokenizer.encode("One prefill, then one token per step, must equal one big forward pass.")
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=64)
    full = torch.from_numpy(runner.prefill(ids).copy())
    loop = kv_loop_logits(tiny_model, ids, prefill=4)
    torch.testing.assert_close(loop, full, atol=1e-5, rtol=1e-5)
    runner.prefill([5, 6, 7])  # a different sequence in between must not leak into the next one
    torch.testing.assert_close(torch.from_numpy(runner.prefill(ids)), full, atol=1e-6, rtol=0)


def test_runner_refuses_to_overflow_its_cache(tiny_model):
    from smolship.errors import SmolshipError

    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=8)
    runner.prefill(list(range(10, 18)))
    with pytest.raises(SmolshipError, match="KV cache holds 8"):
        runner.decode(3)


@pytest.mark.slow
def test_real_135m_matches_transformers_over_256_tokens(default_model):
    """Acceptance: prefill 32 + 224 single-token steps; max |Δlogit| ≤ 1e-4; 64 greedy tokens identical."""
    from smolship.evalset import load_eval

    ids = [t for doc in load_eval(default_model.tokenizer) for t in doc.ids][:256]  # prose, then chat
    assert len(ids) == 256
    hf = hf_twin(default_model)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0]
    got = kv_loop_logits(default_model, ids, prefill=32)
    assert (got - want).abs().max().item() <= 1e-4

    prompt = default_model.tokenizer.encode_chat([{"role": "user", "content": "Tell me about the ocean."}])
    with torch.no_grad():
        hf_greedy = hf.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, min_new_tokens=64,
                                pad_token_id=0)[0, len(prompt):].tolist()
    runner = ReferenceRunner.from_source(default_model, max_seq_len=256)
    ours = list(generate(runner, prompt, 64))
    assert ours == hf_greedy


@pytest.mark.slow
@pytest.mark.parametrize("preset,n_tokens", [("smollm2-360m", 48), ("smollm2-1.7b", 12)])
def test_random_published_configs_match_transformers(preset, n_tokens):
    source = load_model(f"random:{preset}")
    ids = list(range(1000, 1000 + n_tokens))
    hf = hf_twin(source)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0]
    got = kv_loop_logits(source, ids, prefill=n_tokens // 2)
    # random weights give logits of order 1-10; fp32 through 24-32 layers stays within 1e-4
    assert (got - want).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_with_weights_aliases_and_skips_random_init(tiny_model):
    """Llama.with_weights: parameters ARE the given tensors (no copy), buffers are real, a mismatch is named."""
    from smolship.exporter.model import Llama

    model = Llama.with_weights(tiny_model.config, tiny_model.state_dict, max_seq_len=64)
    emb = tiny_model.state_dict["embed_tokens.weight"]
    assert model.embed_tokens.weight.data_ptr() == emb.data_ptr()
    if tiny_model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids = torch.tensor([tiny_model.tokenizer.encode("aliased weights, same logits")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.tensor([0])), tiny_model.build(64)(ids, torch.tensor([0])))
    broken = {k: v for k, v in tiny_model.state_dict.items() if k != "norm.weight"}
    with pytest.raises(ValueError, match="norm.weight"):
        Llama.with_weights(tiny_model.config, broken, max_seq_len=64)


def test_one_fusion_table_covers_every_layer_matrix_once(tiny_model):
    """naming.FUSED is the one q/k/v and gate/up fusion table (ONNX's graph weights, calibration keys,
    SmoothQuant): every linear of a decoder layer is in exactly one fused matrix, and each norm it names
    feeds that matrix. `swap_norms` reaches every RMSNorm and `rope_halves` is what the tables repeat."""
    from torch import nn

    from smolship.exporter.model import LAYER_NORMS, RMSNorm, rope_halves
    from smolship.exporter.naming import FUSED, FUSED_OF, NORM_FED

    model = tiny_model.build(64)
    layer = model.layers[0]
    linears = sorted(n for n, m in layer.named_modules() if isinstance(m, nn.Linear))
    assert sorted(FUSED_OF) == linears and sum(map(len, FUSED.values())) == len(linears)
    assert set(NORM_FED.values()) == set(LAYER_NORMS) and set(NORM_FED) <= set(FUSED)

    class Marked(RMSNorm):
        pass

    model.swap_norms(Marked)
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * tiny_model.config.num_layers + 1 and all(isinstance(m, Marked) for m in norms)
    cos, sin = rope_halves(model.rope_cos, model.rope_sin)
    assert torch.equal(torch.cat([cos, cos], -1), model.rope_cos) and torch.equal(torch.cat([sin, sin], -1), model.rope_sin)
