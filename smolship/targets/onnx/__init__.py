"""ONNX target: an onnxruntime-genai model folder (model.onnx + genai_config.json + tokenizer files).

Modules, in pipeline order: graph_model (the nn.Modules exported, genai's I/O names), contrib_ops
(ORT fused kernels as torch custom ops), export (torch.onnx dynamo -> onnx_ir), calibration +
blockquant + quantize (DequantizeLinear + MatMul, or MatMulNBits / GatherBlockQuantized; graph_edit holds
the graph edits quantize and portable share), recipes (fp32/fp16/int8/int4 as data),
genai_config, runner (ONNX Runtime with IO binding), target (the registered `OnnxTarget`).
This package imports no ONNX library itself, so smolship works without the onnx extra installed.
"""
