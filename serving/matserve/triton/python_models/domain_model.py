"""Triton python-backend domain model: items (e.g. formulas) in, the served model's own codec, results out.

Copied into ``<repository>/<model>_formulas/<n>/model.py`` by ``matserve triton build-repo``. It runs
the same ``preprocess`` / ``postprocess`` as the HTTP API (the :class:`~matserve.models.base.ServedModel`
named in the config) and sends the tensors to the tensor model of the same Triton version through
BLS, so it works over either tensor backend (python + ONNX Runtime on CPU, onnxruntime on GPU).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from matserve.registry import ModelVersion


class BlsRuntime:
    """The :class:`~matserve.models.base.Runtime` protocol over Triton's BLS calls to the tensor model."""

    name = "triton-bls"

    def __init__(self, tensor_model: str, triton_version: int, max_batch_size: int, output_names: list[str]) -> None:
        self.tensor_model = tensor_model
        self.triton_version = triton_version
        self.max_batch_size = max_batch_size
        self.output_names = output_names

    def load(self, model: ModelVersion) -> None:
        return None

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, rows, self.max_batch_size):
            request = pb_utils.InferenceRequest(
                model_name=self.tensor_model,
                model_version=self.triton_version,
                requested_output_names=self.output_names,
                inputs=[
                    pb_utils.Tensor(k, np.ascontiguousarray(v[start : start + self.max_batch_size]))
                    for k, v in inputs.items()
                ],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"tensor model {self.tensor_model}: {response.error().message()}")
            for name in self.output_names:
                parts[name].append(pb_utils.get_output_tensor_by_name(response, name).as_numpy())
        return {name: np.concatenate(p) for name, p in parts.items()}


class TritonPythonModel:
    """Domain inputs in, per-item result fields out as 1-D tensors (NaN / empty string when absent)."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        card = json.loads((folder / "card.json").read_text())
        self.model_version = ModelVersion(name=card["name"], version=card["version"], path=folder, card=card)
        module_name, class_name = parameters["served_model"].split(":")
        served_class = getattr(importlib.import_module(module_name), class_name)
        runtime = BlsRuntime(
            tensor_model=parameters["tensor_model"],
            triton_version=int(args["model_version"]),
            max_batch_size=int(parameters["tensor_max_batch_size"]),
            output_names=[o["name"] for o in card["outputs"]],
        )
        self.served = served_class(None, runtime)
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], o["data_type"]) for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
                # undecodable bytes become U+FFFD, which the codec refuses per item (the other items still run)
                items = [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in raw]
                prepared = self.served.preprocess(items, self.model_version)
                outputs = self.served.predict(prepared, self.model_version)
                results = self.served.postprocess(prepared, outputs)
                responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(results)))
            except Exception as error:  # one bad request must not fail the others of the batch
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(error).__name__}: {error}"))
                )
        return responses

    def _tensors(self, results: list[dict[str, Any]]) -> list[Any]:
        tensors = []
        for name, data_type in self.outputs:
            values = [r.get(name) for r in results]
            if data_type == "TYPE_STRING":
                array = np.array([(v or "").encode("utf-8") for v in values], dtype=np.object_)
            else:
                array = np.array([math.nan if v is None else v for v in values], dtype=np.float32)
            tensors.append(pb_utils.Tensor(name, array))
        return tensors
