"""Stage timings: every bundle's manifest says where its export and validation time went."""

from __future__ import annotations

import pytest

from smolship.stage_clock import StageClock, stage_of


@pytest.mark.parametrize("desc, stage", [
    ("parity doc-3", "parity"),
    ("parity on executorch 1.5.0 (x86_64)", "parity on executorch"),
    ("quantize model.layers.0.self_attn.q_proj.weight", "quantize"),
    ("gguf blk.0.attn_q.weight", "gguf"),
    ("compressing (w4)", "compressing"),
    ("lowering to XNNPACK", "lowering to XNNPACK"),
    ("gguf: importance matrix", "gguf: importance matrix"),
])
def test_per_item_progress_folds_into_its_stage(desc, stage):
    assert stage_of(desc) == stage


def test_time_is_charged_to_the_stage_that_was_running():
    now = [0.0]
    seen = []
    clock = StageClock(lambda d, f: seen.append(d), clock=lambda: now[0])
    now[0] = 1.0
    clock("torch.export", 0.1)          # 1 s of "preparing"
    now[0] = 4.0
    clock("parity doc-1", 0.5)          # 3 s of torch.export
    now[0] = 6.0
    clock("parity doc-2", 0.6)          # same stage: no boundary
    now[0] = 7.5
    clock.enter("model card")
    now[0] = 8.0
    assert clock.seconds() == {"preparing": 1.0, "torch.export": 3.0, "parity": 3.5, "model card": 0.5}
    assert seen == ["torch.export", "parity doc-1", "parity doc-2"]  # the wrapped callback still gets every call


@pytest.mark.parametrize("target", ["gguf", "onnx"])
def test_every_manifest_has_stage_timings(tiny_bundle, target):
    _, manifest = tiny_bundle(target)
    stages = manifest["stage_seconds"]
    assert {"packaging", "parity", "model card"} <= set(stages), stages
    assert all(v >= 0 for v in stages.values())
    # the target's own steps are timed too, and together they account for its export time
    own = sum(v for k, v in stages.items() if k not in ("packaging", "validating", "parity", "greedy", "model card"))
    assert own == pytest.approx(manifest["export_seconds"], abs=0.1 * len(stages) + 0.2)
