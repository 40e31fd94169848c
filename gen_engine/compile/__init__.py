"""Compilation of a trained generator for fast inference: ONNX export, parity checks, TensorRT engines."""
