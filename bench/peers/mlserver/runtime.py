"""MLServer's runtime for bench/load.py: MLServer 1.7.1 has no ONNX runtime package, so
this one calls onnxruntime, with the gateway's session options (one intra-op and one
inter-op thread, CPU). Loaded by `mlserver start bench/peers/mlserver` from its venv."""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """One ONNX model; inputs and outputs as OIP v2 tensors (NumpyCodec)."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        pairs = zip(self._outputs, results, strict=True)
        outputs = [NumpyCodec.encode_output(n, r) for n, r in pairs]
        return InferenceResponse(model_name=self.name, outputs=outputs)
