"""smolship: ship one small decoder LLM to ONNX, Core ML, ExecuTorch and GGUF, each proven against PyTorch."""

__version__ = "0.1.0"
