"""Triton runtime: tensor work goes to a Triton server (``TRITON_URL``) over KServe v2, gRPC or HTTP.

The repository Triton serves is generated from the same registry by ``matserve triton build-repo``.
Each config carries the map from Triton's integer versions to registry versions with the sha256 of
``model.onnx``; a registry version is run only on the Triton version built from the very same file.

When Triton is unreachable, predictions fail with 503 ``unavailable`` and a message naming Triton
(connection refused is reported at once; a connect attempt is bounded to 1 s). There is no silent
fallback to in-process ONNX Runtime: a deployment that asked for Triton (e.g. for its GPU) learns that
Triton is down instead of quietly running on the API pods' CPUs. The gRPC channel reconnects with a
backoff capped at 1 s, so service resumes by itself when Triton returns.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from matserve.errors import Unavailable
from matserve.registry import ModelVersion
from matserve_client.exceptions import APIError, MatserveConnectionError, MatserveError, NotFoundError
from matserve_client.kserve import KServeTransport

logger = logging.getLogger("matserve.runtime")


class TritonRuntime:
    """Run registry models on Triton.

    Parameters
    ----------
    url : str
        ``grpc://host:8001``, ``http://host:8000`` or ``host:port`` (gRPC).
    timeout_s : float
        Longest one inference call may take, in seconds.
    """

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self.transport = KServeTransport(url, timeout=timeout_s, connect_timeout=1.0)
        self._numbers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def load(self, model: ModelVersion) -> None:
        """Check Triton serves this exact version; an unreachable Triton is logged, not fatal (it may come later)."""
        try:
            self._triton_version(model)
        except Unavailable as error:
            logger.warning("%s/%s: %s; requests will answer 503 until it is", model.name, model.version, error)

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on Triton; returns every output the card lists."""
        number = self._triton_version(model)
        names = [o["name"] for o in model.card["outputs"]]
        try:
            outputs, _ = self.transport.infer(model.name, inputs, names, version=number)
        except MatserveError as error:
            raise self._unavailable(error) from None
        return outputs

    def _triton_version(self, model: ModelVersion) -> str:
        key = (model.name, model.version)
        with self._lock:
            if key in self._numbers:
                return self._numbers[key]
        try:
            mapping, _ = self.transport.version_map(model.name, refresh=True)
        except MatserveError as error:
            raise self._unavailable(error) from None
        sha256 = model.card["files"]["model.onnx"]["sha256"]
        for number, entry in mapping.items():
            if entry["version"] == model.version:
                if entry["sha256"] != sha256:
                    raise Unavailable(
                        f"Triton at {self.url} serves a different build of {model.name} {model.version} "
                        f"(model.onnx sha256 {entry['sha256'][:12]}…, registry {sha256[:12]}…); rebuild its "
                        "repository with `matserve triton build-repo`"
                    )
                with self._lock:
                    self._numbers[key] = number
                return number
        raise Unavailable(
            f"Triton at {self.url} does not serve {model.name} {model.version} (it has "
            f"{', '.join(e['version'] for e in mapping.values()) or 'none'}); rebuild its repository"
        )

    def _unavailable(self, error: MatserveError) -> Unavailable:
        if isinstance(error, NotFoundError):
            return Unavailable(f"Triton at {self.url} does not serve this model: {error.message}")
        if isinstance(error, MatserveConnectionError):
            return Unavailable(f"the model server (Triton at {self.url}) is unreachable; retry shortly ({error})")
        if isinstance(error, APIError):
            return Unavailable(f"Triton at {self.url} failed: {error.message}")
        return Unavailable(f"Triton at {self.url} failed: {error}")
