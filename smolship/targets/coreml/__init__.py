"""Core ML target: a stateful iOS18 mlprogram that Swift apps load with huggingface/swift-transformers.

Modules, one job each (coremltools is imported inside them, never here):
convention (I/O names, metadata keys, mask), stateful (export wrapper around exporter.model.Llama),
convert (trace + ct.convert), compress (recipe plans -> MIL compression passes), naming (MIL const
names <-> state-dict names), readback (the saved package's structure and dequantized weights),
graph_runner (the converted graph at fp16 in PyTorch), stored_weights (the package's weights as Runners,
for validation.weight_parity: parity without the runtime),
runner (MLModel.predict with state, macOS 15+), target (CoreMLTarget).
"""
