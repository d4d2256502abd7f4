"""The TFLite backend: load a model, read its signature, run batches on one interpreter."""

from servekit.runtime.interpreter import interpreter_class, runtime_name
from servekit.runtime.model import ModelSignature, TFLiteModel, read_model_bytes

__all__ = ["ModelSignature", "TFLiteModel", "interpreter_class", "read_model_bytes", "runtime_name"]
