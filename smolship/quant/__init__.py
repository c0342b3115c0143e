"""The backend-neutral quantization core (issue 16): grids, GPTQ, activation statistics.

Targets keep only their packers (how codes and scales are laid out for their kernels). Layout is
PyTorch's everywhere here: a weight is ``(N, K)`` (out, in), blocks run along K.
"""

from smolship.quant.grids import Grid, affine_minmax, affine_search, blocks_of, symmetric_search, unblock
from smolship.quant.gptq import gptq
from smolship.quant.stats import Stats, collect

__all__ = ["Grid", "Stats", "affine_minmax", "affine_search", "blocks_of", "collect", "gptq", "symmetric_search",
           "unblock"]
