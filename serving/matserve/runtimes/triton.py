"""Triton runtime: tensor work goes to a Triton server (``TRITON_URL``) over KServe v2, gRPC or HTTP.

The repository Triton serves is generated from the same registry by ``matserve triton build-repo``.
Each config carries the map from Triton's integer versions to registry versions with the sha256 of
``model.onnx``; a registry version is run only on the Triton version built from the very same file.

When Triton is unreachable (connection refused, reset, or no answer in time; a connect attempt is
bounded to 1 s) the same registry version runs in-process with ONNX Runtime instead
(``MATSERVE_TRITON_FALLBACK=ort``, the default), so no request fails because Triton went away. Every
fallback is counted in ``matserve_runtime_fallback_total`` and an outage is logged once. A circuit
breaker then skips Triton for ``MATSERVE_TRITON_RETRY_AFTER_S`` seconds before one request probes it
again, so a hung Triton costs at most one timeout per period, and Triton takes the traffic back by
itself when it returns (the gRPC channel's reconnect backoff is capped at 1 s). With
``MATSERVE_TRITON_FALLBACK=none`` an unreachable Triton answers 503 ``unavailable`` at once, for
deployments where running on the API pods' CPUs is worse than failing. Triton answering with an error,
or serving a different build of a version, is always a 503: that is a deployment error, not an outage.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import numpy as np

from matserve.breaker import CircuitBreaker
from matserve.errors import Unavailable
from matserve.metrics import RUNTIME_FALLBACKS
from matserve.registry import ModelVersion
from matserve_client.exceptions import APIError, MatserveConnectionError, MatserveError, NotFoundError

if TYPE_CHECKING:
    from matserve.models.base import Runtime
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
    fallback : Runtime, optional
        Runs the model when Triton is unreachable (in-process ONNX Runtime); ``None``: answer 503 instead.
    retry_after_s : float
        After Triton failed, use the fallback for this many seconds before one request probes Triton again.
    """

    name = "triton"

    def __init__(
        self, url: str, timeout_s: float = 60.0, fallback: Runtime | None = None, retry_after_s: float = 2.0
    ) -> None:
        self.url = url
        self.transport = KServeTransport(url, timeout=timeout_s, connect_timeout=1.0)
        self.fallback = fallback
        self.breaker = CircuitBreaker(f"Triton at {url}", retry_after_s)
        self._numbers: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def load(self, model: ModelVersion) -> None:
        """Check Triton serves this exact version (an unreachable Triton is logged, not fatal: it may come
        later) and prepare the fallback's session, so that falling back costs no model load."""
        if self.fallback is not None:
            self.fallback.load(model)
        try:
            self._triton_version(model)
        except _Unreachable as error:
            then = "in-process ONNX Runtime answers" if self.fallback is not None else "requests answer 503"
            logger.warning("%s/%s: %s; %s until it is reachable", model.name, model.version, error.unavailable, then)
        except Unavailable as error:
            logger.error("%s/%s: %s", model.name, model.version, error)

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on Triton (or on the fallback while Triton is unreachable); returns every card output."""
        if self.fallback is not None and not self.breaker.allow():
            return self._fall_back(model, inputs)
        try:
            triton_name, number = self._triton_version(model)
            try:
                outputs, _ = self.transport.infer(triton_name, inputs, [o["name"] for o in model.tensor_specs("outputs")],
                                                  version=number)  # fmt: skip
            except MatserveConnectionError as error:
                raise _Unreachable(self._unavailable(error)) from None
            except MatserveError as error:
                raise self._unavailable(error) from None
        except _Unreachable as error:
            if self.fallback is None:
                raise error.unavailable from None
            self.breaker.record_failure(error.unavailable)
            return self._fall_back(model, inputs)
        self.breaker.record_success()
        return outputs

    def describe(self) -> dict[str, object]:
        """What ``GET /v1/models`` says about the runtime."""
        return {
            "name": self.name,
            "url": self.url,
            "fallback": self.fallback.name if self.fallback is not None else None,
            "triton_reachable": not self.breaker.failing,
        }

    def _fall_back(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.fallback is not None
        RUNTIME_FALLBACKS.labels(model=model.name, version=model.version).inc()
        return self.fallback.run(model, inputs)

    def _triton_version(self, model: ModelVersion) -> tuple[str, str]:
        """(Triton model name, Triton version number) serving a registry version (the name differs from the
        registry's for an older version with another tensor interface; see ``matserve.triton.repository``)."""
        key = (model.name, model.version)
        with self._lock:
            if key in self._numbers:
                return self._numbers[key]
        try:
            mapping, _ = self.transport.version_map(model.name, refresh=True)
        except MatserveConnectionError as error:
            raise _Unreachable(self._unavailable(error)) from None
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
                found = (entry.get("model", model.name), number)
                with self._lock:
                    self._numbers[key] = found
                return found
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


class _Unreachable(Exception):
    """Triton did not answer (as opposed to answering with an error): the case the fallback is for."""

    def __init__(self, unavailable: Unavailable) -> None:
        super().__init__(str(unavailable))
        self.unavailable = unavailable
