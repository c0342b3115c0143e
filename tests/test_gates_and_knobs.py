"""Gate thresholds: defaults, project settings (global and per precision) and CLI overrides, in that order."""

from __future__ import annotations

import pytest

from smolship.errors import SmolshipError
from smolship.validation.gates import Thresholds, check, check_project_gate, thresholds_for


def test_per_precision_table_overrides_the_same_global_key():
    project = {"max_kld": 0.05, "min_top1": 0.9, "4-bit": {"max_kld": 0.2}}
    assert thresholds_for("4-bit", project, Thresholds()).max_kld == 0.2
    assert thresholds_for("8-bit", project, Thresholds()).max_kld == 0.05
    assert thresholds_for("4-bit", project, Thresholds()).min_top1 == 0.9
    assert thresholds_for("4-bit", project, Thresholds(max_kld=0.01)).max_kld == 0.01  # the CLI wins


def test_unknown_threshold_is_named_before_any_work():
    with pytest.raises(SmolshipError) as err:
        check_project_gate({"8-bit": {"max_kl": 0.01}})
    assert "max_kl" in err.value.problem and "max_kld" in err.value.fix


def test_check_reports_metric_value_and_limit():
    result = check({"bundle": "b", "kld_mean": 0.3, "top1_agreement": 0.99, "decode_tok_s": None},
                   Thresholds(max_kld=0.1, min_decode_tok_s=10))
    assert not result.passed and "kld_mean = 0.3" in result.failures[0] and "0.1" in result.failures[0]
    assert any("decode_tok_s not measured" in n for n in result.notes)


# ---- typed target knobs (ExportOptions.extra), checked before any work ------------------------------
def test_unknown_or_ill_typed_knob_fails_before_export(tiny_model, tmp_path):
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    for target, extra, words in [("onnx", {"int4_methd": "rtn"}, ("int4_methd", "int4_method")),
                                 ("executorch", {"group_size": "64"}, ("group_size", "int")),
                                 ("gguf", {"imatrix": "no"}, ("imatrix", "bool")),
                                 ("coreml", {"anything": 1}, ("anything",))]:
        recipe = get_target(target).recipes[get_target(target).default_recipes[0]]
        with pytest.raises(SmolshipError) as err:
            export_bundle(tiny_model, target, recipe, tmp_path, ExportOptions(extra=extra))
        text = f"{err.value.problem} {err.value.fix}"
        assert all(w in text for w in words), text
        assert not any(tmp_path.iterdir())  # nothing written


def test_an_invalid_rule_regex_fails_before_export(tiny_model, tmp_path):
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    for target, recipe, extra in [("onnx", "int4", {"int4_eight_bit": ["layers\\.(0"]}),
                                  ("executorch", "8da4w", {"rules": [["layers\\.(0", "fp32"]]})]:
        with pytest.raises(SmolshipError) as err:
            export_bundle(tiny_model, target, get_target(target).recipes[recipe], tmp_path, ExportOptions(extra=extra))
        assert "invalid regular expression" in err.value.problem and "layers\\.(0" in err.value.problem
        assert not any(tmp_path.iterdir())  # nothing written


def test_knobs_parse_to_typed_values():
    from smolship.targets.knobs import describe, parse
    from smolship.targets.onnx.recipes import OnnxKnobs

    k = parse(OnnxKnobs, {"lm_head_bits": 4, "int4_eight_bit": ["layers\\.0\\..*"]}, "onnx")
    assert k.lm_head_bits == 4 and k.int4_eight_bit == ["layers\\.0\\..*"] and k.accuracy_level == 4
    assert {name for name, _, help_ in describe(OnnxKnobs) if help_} == set(OnnxKnobs.__dataclass_fields__)
