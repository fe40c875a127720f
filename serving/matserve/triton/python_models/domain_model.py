"""Triton python-backend domain model: domain inputs in, the served model's own codec and lifecycle, results out.

Copied into ``<repository>/<domain model>/<n>/model.py`` by ``matserve triton build-repo``, with the version's
``card.json`` and side files (e.g. ``latent_reference.npz``). It runs the
:class:`~matserve.models.base.ServedModel` named in the config (the HTTP API's class) over a registry of this one
version folder, with a runtime that sends the tensors to the tensor model serving the same registry version
through BLS, so it works over either tensor backend (python + ONNX Runtime on CPU, onnxruntime on GPU). Two kinds:

* ``formation_enthalpy_formulas`` (no ``domain_handler`` parameter): formulas in (BYTES), per-item result fields
  out as 1-D tensors (NaN / empty string when absent), per-item errors included, as the HTTP API answers;
* the others (``domain_handler`` = a key of :data:`matserve.triton.domain.HANDLERS`): the request's tensors go to
  the handler, which calls the served model's public entry point; out come ``results_json`` (one JSON object per
  item: the HTTP API's result, floats at full precision), ``registry_version`` and typed tensors of the config
  (NaN where a result has no value). Request errors answer a Triton error (INVALID_ARG, NOT_FOUND, UNAVAILABLE).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from matserve.registry import ModelVersion


def _use_pythonpath() -> None:
    """Put ``PYTHONPATH``'s folders on ``sys.path``: the python-backend stub does not read it (the venv's
    site-packages and editable ``matserve`` come from the stub's own ``site``), and the HTTP API's modules
    reused here import the SDK's wire schemas (``clients/``)."""
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.append(entry)


_use_pythonpath()


def output_names(card: dict[str, Any]) -> list[str]:
    """The graph's output names from a card (``outputs`` is a list of specs or a mapping of names to specs)."""
    outputs = card["outputs"]
    return [o["name"] for o in outputs] if isinstance(outputs, list) else list(outputs)


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


def _error_code(status: int) -> Any:
    """Triton error code of an HTTP status (the python backend of older Tritons has no codes: ``None``)."""
    codes = {404: "NOT_FOUND", 503: "UNAVAILABLE"}
    name = codes.get(status, "INVALID_ARG" if 400 <= status < 500 else "INTERNAL")
    return getattr(pb_utils.TritonError, name, None)


def triton_error(message: str, status: int = 500) -> Any:
    """A ``pb_utils.TritonError`` with the code of ``status``."""
    code = _error_code(status)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    """One served model over this version folder; see the module docstring for the two kinds."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        number = args["model_version"]
        folder = Path(args["model_repository"]) / number
        card = json.loads((folder / "card.json").read_text())
        self.model_version = ModelVersion(name=card["name"], version=card["version"], path=folder, card=card)
        module_name, class_name = parameters["served_model"].split(":")
        served_class = getattr(importlib.import_module(module_name), class_name)
        versions = json.loads(parameters["matserve_versions"])
        runtime = BlsRuntime(
            tensor_model=versions.get(number, {}).get("model", parameters["tensor_model"]),
            triton_version=int(number),
            max_batch_size=int(card.get("serving", {}).get("max_batch_size", parameters["tensor_max_batch_size"])),
            output_names=output_names(card),
        )
        self.handler = parameters.get("domain_handler")
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], o["data_type"], [int(d) for d in o.get("dims", [])]) for o in config["output"]]
        if self.handler is None:
            self.served = served_class(None, runtime)
            return
        from matserve.settings import Settings
        from matserve.triton.domain import OneVersionRegistry

        self.served = served_class(OneVersionRegistry(self.model_version), runtime)
        self.settings = Settings()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                tensors = self._formulas(request) if self.handler is None else self._domain(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:  # one bad request must not fail the others of the batch
                responses.append(pb_utils.InferenceResponse(error=self._error(error)))
        return responses

    # -- formulas (formation enthalpy) -----------------------------------------------------------------------

    def _formulas(self, request: Any) -> list[Any]:
        raw = pb_utils.get_input_tensor_by_name(request, self.inputs[0]).as_numpy().reshape(-1)
        # undecodable bytes become U+FFFD, which the codec refuses per item (the other items still run)
        items = [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in raw]
        prepared = self.served.preprocess(items, self.model_version)
        outputs = self.served.predict(prepared, self.model_version)
        results = self.served.postprocess(prepared, outputs)
        tensors = []
        for name, data_type, _ in self.outputs:
            values = [r.get(name) for r in results]
            if data_type == "TYPE_STRING":
                array = np.array([(v or "").encode("utf-8") for v in values], dtype=np.object_)
            else:
                array = np.array([math.nan if v is None else v for v in values], dtype=np.float32)
            tensors.append(pb_utils.Tensor(name, array))
        return tensors

    # -- handler models (XRD, EBSD, scattering) --------------------------------------------------------------

    def _domain(self, request: Any) -> list[Any]:
        from matserve.triton.domain import run

        inputs: dict[str, np.ndarray] = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        prediction = run(self.handler, self.served, inputs, self.settings)
        results = prediction.results
        tensors = []
        for name, _, dims in self.outputs:
            if name == "results_json":
                array = np.array([json.dumps(r, allow_nan=False).encode("utf-8") for r in results], dtype=np.object_)
            elif name == "registry_version":
                array = np.array([prediction.version.encode("utf-8")], dtype=np.object_)
            else:  # a typed tensor of one result field: (n,) or (n, width)
                width = dims[1] if len(dims) > 1 else None
                array = np.full((len(results),) if width is None else (len(results), width), math.nan, np.float32)
                for i, result in enumerate(results):
                    if result.get(name) is not None:
                        array[i] = result[name]
            tensors.append(pb_utils.Tensor(name, array))
        return tensors

    def _error(self, error: Exception) -> Any:
        if self.handler is None:
            return triton_error(f"{type(error).__name__}: {error}")
        from matserve.errors import MatserveError
        from matserve.triton.domain import as_matserve_error

        mapped = as_matserve_error(error)
        if isinstance(mapped, MatserveError):
            return triton_error(mapped.message, mapped.status)
        return triton_error(f"{type(error).__name__}: {error}")
