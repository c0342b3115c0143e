"""`smolship export --device-memory` (issue 29): its units, and the refusal before any work, with the numbers."""

from __future__ import annotations

import pytest

from smolship.device_budget import check_device_memory, need_bytes, parse_memory
from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS
from smolship.preflight import kv_cache_bytes
from test_cli import assert_clean_error, smolship


@pytest.mark.parametrize("text,value", [("3GB", 3 * 10**9), ("3 gb", 3 * 10**9), ("3000MB", 3 * 10**9),
                                        ("2.5GiB", int(2.5 * 2**30)), ("512MiB", 512 * 2**20), ("1.5 TB", 15 * 10**11)])
def test_memory_units(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text,needle", [("3", "with a unit"), ("3 GBs", "with a unit"), ("-1GB", "with a unit"),
                                         ("lots", "with a unit"), ("0GB", "at least 1MB"), ("999KB", "at least 1MB")])
def test_bad_memory_is_refused(text, needle):
    with pytest.raises(SmolshipError) as e:
        parse_memory(text)
    assert needle in e.value.problem and "3GB" in e.value.fix


def test_the_1_7b_at_8192_positions_does_not_fit_3gb_and_says_why():
    cfg = PRESETS["smollm2-1.7b"]
    with pytest.raises(SmolshipError) as e:
        check_device_memory("3GB", cfg, [("gguf", "q4_k_m", "4-bit")], 8192, [("gguf", "q4_k_m", "4-bit")])
    msg = e.value.problem
    assert "KV cache 3.22 GB (exact: fp32 at 8192 positions)" in msg and "(estimate:" in msg
    assert "the weights alone" not in msg and "positions fit beside these weights" in msg
    assert "--max-seq-len" in e.value.fix
    # at 2,048 positions it fits: 0.81 GB of cache beside ~1.3 GB of (estimated) 4-bit weights
    assert check_device_memory("3GB", cfg, [("gguf", "q4_k_m", "4-bit")], 2048) == 3 * 10**9
    need = need_bytes(cfg, "gguf", "q4_k_m", "4-bit", 2048)
    assert need["kv"] == kv_cache_bytes(cfg, 2048) and need["total"] == need["weights"] + need["kv"]


def test_device_memory_refusal_before_any_work(tmp_path):
    """random:tiny q8_0: ~3.5 MB of weights (estimate) + 0.26 MB of cache at 512 positions over 3.6MB: refused with
    both figures and the positions that would fit, and nothing written."""
    out = tmp_path / "out"
    proc = smolship("export", "random:tiny", "--target", "gguf", "--quant", "q8_0", "--max-seq-len", "512",
                    "--device-memory", "3.6MB", "--out", str(out))
    assert_clean_error(proc, "Over the device budget", "gguf-q8_0 needs", "(estimate:", "KV cache 0.26 MB (exact: fp32 at 512 positions)", "needs 3.73 MB", "3.2M parameters",
                       "positions fit beside these weights", "--device-memory")
    assert not out.exists()
    proc = smolship("export", "random:tiny", "--target", "gguf", "--device-memory", "3 gigs", "--out", str(out))
    assert_clean_error(proc, "--device-memory '3 gigs' is not an amount of memory")
    assert not out.exists()
