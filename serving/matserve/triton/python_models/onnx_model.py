"""Triton python-backend tensor model: runs the version folder's ``model.onnx`` with ONNX Runtime (CPU runs).

Copied into ``<repository>/<model>/<n>/model.py`` by ``matserve triton build-repo --target cpu``. The
requests of one dynamic batch are concatenated and run as one ONNX Runtime call, then split again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.input_names
        }
        sizes = [len(a) for a in arrays[self.input_names[0]]]
        feeds = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in arrays.items()}
        outputs = self.session.run(self.output_names, feeds)
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(n, o[start : start + size]) for n, o in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
