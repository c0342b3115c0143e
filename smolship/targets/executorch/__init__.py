"""ExecuTorch target (XNNPACK): a `.pte` that drops into ExecuTorch's LLM runner and demo apps.

The chain, one module per step (read in this order):

* ``recipes.py`` - the recipes, their plans (``QuantPlan``) and the measurements behind them;
* ``quantize.py`` - packing: plans applied with torchao, plus the asymmetric 4-bit path that
  reproduces Q4_1-style weights on XNNPACK's symmetric kernels;
* ``ops.py`` - the cache (``CustomOpCache``: ExecuTorch's ``llama::update_cache`` and
  ``llama::custom_sdpa`` instead of slow portable index/softmax kernels) and the module swaps that
  ``Llama.decode`` runs with;
* ``export.py`` - torch.export with a dynamic token dimension, XNNPACK lowering, the runner's
  constant methods, serialization;
* ``runner.py`` - a `Runner` over ``executorch.runtime`` (prefill through the dynamic forward, decode
  one token at a time);
* ``target.py`` - the registered ``ExecuTorchTarget``.

This package imports nothing heavy; only ``target.py`` and the step modules import executorch/torchao.
"""
