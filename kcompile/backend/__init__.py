"""Backend: graph IR -> ONNX."""
from .onnx import IR_VERSION, OPSET, to_onnx

__all__ = ["IR_VERSION", "OPSET", "to_onnx"]
