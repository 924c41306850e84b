"""The inference engine (CUDA graphs, compiled CPU path) and its benchmark."""

from robopolicy.engine.engine import BACKENDS, InferenceEngine

__all__ = ["BACKENDS", "InferenceEngine"]
