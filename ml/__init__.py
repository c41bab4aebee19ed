"""Features, labels, training and ONNX inference for the ML ensemble (issue 4; not built yet)."""
