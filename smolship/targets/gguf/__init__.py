"""GGUF target: llama.cpp's file format, written with gguf-py, k-quants by llama.cpp's own quantizer,
validated by running the file in llama.cpp (llama-cpp-python).

Modules: recipes (the --quant table), plan (per-tensor types, lossless copies), metadata (llama.*,
tokenizer, general.*), export (gguf-py writing), imatrix (importance matrix from the reference), quantize
(llama.cpp C API), runner (llama.cpp KV-cache loop), target (the chain). Importing this package does
not import llama_cpp; `target` does.
"""

from smolship.targets.gguf.recipes import DEFAULT_RECIPES, RECIPES

__all__ = ["DEFAULT_RECIPES", "RECIPES"]
