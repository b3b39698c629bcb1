"""Training: the train section compiled to a training-step graph (forward, generated
backward, optimizer update) and an evaluation graph, both plain ONNX."""
from .graphs import TrainingProgram, build_training

__all__ = ["TrainingProgram", "build_training"]
