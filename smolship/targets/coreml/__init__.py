"""Core ML target: a stateful iOS18 mlprogram that Swift apps load with huggingface/swift-transformers.

Modules, one job each (coremltools is imported only inside them, never here):
convention (I/O names, metadata keys, mask), stateful (export wrapper around exporter.model.Llama),
convert (trace + ct.convert), compress (recipe plans), naming (MIL const names <-> state-dict names),
readback (the saved package's structure and dequantized weights), weight_parity (parity without the
runtime), runner (MLModel.predict with state, macOS 15+), target (CoreMLTarget).
"""
