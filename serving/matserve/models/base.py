"""The lifecycle every served model shares (after KServe's ``Model``).

``load -> preprocess -> predict -> postprocess``; each stage is timed into the
``matserve_stage_duration_seconds`` histogram per model and version. Subclasses
hold only domain logic (their codec); transport lives in the service.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from matserve.errors import ModelNotFound
from matserve.metrics import ITEMS, REQUESTS, STAGE_SECONDS
from matserve.registry import ModelVersion, Registry

Prepared = TypeVar("Prepared")


class Runtime(Protocol):
    """What a model needs from a runtime: run named tensors through a registry version."""

    name: str

    def load(self, model: ModelVersion) -> Any: ...

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Prediction:
    """What a model returns: who answered and one result per input item."""

    model: str
    version: str
    results: list[dict[str, Any]]


class ServedModel(ABC, Generic[Prepared]):
    """A registry model behind a runtime.

    Parameters
    ----------
    registry : Registry
        Where versions come from.
    runtime : Runtime
        Who runs the tensors (in-process ONNX Runtime, or Triton).
    """

    name: str

    def __init__(self, registry: Registry, runtime: Runtime) -> None:
        self.registry = registry
        self.runtime = runtime

    def version(self, version: str | None = None) -> ModelVersion:
        """The verified version to use (the active one when ``version`` is None)."""
        try:
            return self.registry.get(self.name, version)
        except KeyError as error:
            raise ModelNotFound(str(error.args[0])) from None

    def card(self, version: str | None = None) -> dict[str, Any]:
        """The model card of a version."""
        return self.version(version).card

    def load(self, version: str | None = None) -> ModelVersion:
        """Make a version ready to run (creates the runtime session)."""
        model = self.version(version)
        self.runtime.load(model)
        return model

    @abstractmethod
    def preprocess(self, items: list[Any], model: ModelVersion) -> Prepared:
        """Domain input -> tensors plus whatever postprocess needs (per-item errors included)."""

    @abstractmethod
    def predict(self, prepared: Prepared, model: ModelVersion) -> dict[str, np.ndarray]:
        """Run the tensors of ``prepared`` through the runtime."""

    @abstractmethod
    def postprocess(self, prepared: Prepared, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Tensors -> one result dict per input item, in input order."""

    def __call__(self, items: list[Any], version: str | None = None) -> Prediction:
        """Run the whole lifecycle on a batch of items."""
        model = self.version(version)
        labels = {"model": model.name, "version": model.version}
        try:
            with self._timed(labels, "preprocess"):
                prepared = self.preprocess(items, model)
            with self._timed(labels, "predict"):
                outputs = self.predict(prepared, model)
            with self._timed(labels, "postprocess"):
                results = self.postprocess(prepared, outputs)
        except Exception:
            REQUESTS.labels(**labels, outcome="error").inc()
            raise
        REQUESTS.labels(**labels, outcome="ok").inc()
        failed = sum(1 for r in results if r.get("error"))
        ITEMS.labels(**labels, outcome="ok").inc(len(results) - failed)
        ITEMS.labels(**labels, outcome="error").inc(failed)
        return Prediction(model=model.name, version=model.version, results=results)

    @staticmethod
    @contextmanager
    def _timed(labels: dict[str, str], stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            STAGE_SECONDS.labels(**labels, stage=stage).observe(time.perf_counter() - started)
