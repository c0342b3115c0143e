"""Load a model from any supported source into one canonical, export-friendly definition."""

from smolship.exporter.config import PRESETS, LlamaConfig
from smolship.exporter.model import CacheMode, Llama
from smolship.exporter.sources import SourceModel, load_model

__all__ = ["PRESETS", "CacheMode", "Llama", "LlamaConfig", "SourceModel", "load_model"]
