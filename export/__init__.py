"""Export CLI: PyTorch checkpoints to ONNX / fp16 / int8 / TensorRT, each checked numerically (installed as ``facematch.export``)."""
