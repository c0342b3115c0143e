"""Core ML target: a stateful iOS18 mlprogram that Swift apps load with huggingface/swift-transformers.

Modules, one job each (coremltools is imported inside them, never here):
convention (I/O names, metadata keys, mask), stateful (the states cache and fp16-safe norm that
exporter.model.Llama.decode runs with), recipes (names, plans, knobs and the measurements behind them),
export (trace + ct.convert), quantize (plans -> MIL compression passes), naming (MIL const
names <-> state-dict names), readback (the saved package's structure and dequantized weights),
graph_runner (the converted graph at fp16 in PyTorch), stored_weights (the package's weights as Runners,
for validation.weight_parity: parity without the runtime),
runner (MLModel.predict with state, macOS 15+), target (CoreMLTarget).
"""
