"""One small wrapper class per model, each taking an injected ONNX Runtime session."""
