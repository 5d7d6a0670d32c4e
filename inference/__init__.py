"""onnxruntime: validate ONNX files, cache sessions, encode and decode tensors. Knows
nothing of payments."""
