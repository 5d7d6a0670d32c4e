"""Inference's exceptions, each with a stable `code` (the gateway maps them to HTTP)."""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every inference error."""

    code = "inference_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModel(InferenceError):
    """The file cannot be listed or run as an ONNX model."""

    code = "invalid_model"


class NotOnnx(InvalidModel):
    code = "not_onnx"


class ModelTooLarge(InvalidModel):
    code = "model_too_large"


class UnsupportedOpset(InvalidModel):
    code = "unsupported_opset"


class ExternalData(InvalidModel):
    code = "external_data"


class AbsurdShape(InvalidModel):
    code = "absurd_shape"


class InitializerTooLarge(InvalidModel):
    code = "initializer_too_large"


class InvalidGraph(InvalidModel):
    code = "invalid_graph"


class UnsupportedType(InvalidModel):
    code = "unsupported_type"


class BadInput(InferenceError):
    """A request's tensors do not fit the model's signature (or the codec)."""

    code = "bad_input"


class InputTooLarge(BadInput):
    code = "input_too_large"


class InferenceTimeout(InferenceError):
    """A run took longer than its time limit and was stopped."""

    code = "inference_timeout"


class ResourceExhausted(InferenceError):
    """A run asked for more memory than the process allows."""

    code = "resource_exhausted"


class InferenceFailed(InferenceError):
    """onnxruntime failed the run for another reason."""

    code = "inference_failed"


class LoadSizeTooLarge(InvalidModel):
    """What the model materialises at load (sparse tensors densified, local functions
    inlined at every call) exceeds a limit, however small the file."""

    code = "load_size_too_large"


class ModelLoadRefused(InvalidModel):
    """The load probe refused the model: creating its session cost too much or failed."""

    code = "model_load_refused"


class ModelLoadTooCostly(ModelLoadRefused):
    code = "model_load_too_costly"


class ModelLoadTimeout(ModelLoadRefused):
    code = "model_load_timeout"


class ModelLoadCrashed(ModelLoadRefused):
    code = "model_load_crashed"


class ModelLoadFailed(ModelLoadRefused):
    code = "model_load_failed"
