"""Export CLI: PyTorch checkpoints to ONNX / fp16 / int8 / TensorRT, each checked numerically.

Installed as ``facematch.export``; needs the ``export`` extra (torch) for checkpoints.
"""
