"""The lifecycle every served model shares (after KServe's ``Model``).

``load -> [cache read] -> preprocess -> predict -> postprocess -> [cache write]``; each stage is timed
into the ``matserve_stage_duration_seconds`` histogram per model and version. Subclasses hold only domain
logic (their codec); transport lives in the service.

Caching is generic: a subclass that implements :meth:`ServedModel.cache_key` (a cheap, normalised key of one
input item, e.g. the reduced formula) gets per-item caching of its results for free. Items found in the cache
skip the lifecycle; the others run through it in one batch and are stored afterwards (per-item errors are not
stored). Cache failures never fail a prediction (see :mod:`matserve.cache`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from matserve.cache import PredictionCache, cache_key
from matserve.errors import ModelNotFound, Unavailable
from matserve.metrics import CACHE_REQUESTS, ITEMS, REQUESTS, STAGE_SECONDS
from matserve.registry import ModelDegraded, ModelVersion, Registry

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
    cache : PredictionCache, optional
        Per-item result cache shared by the models of a process; ``None`` disables caching.

    Attributes
    ----------
    name : str
        Registry name of the model.
    item_type : Any
        Type of one input item, as a pydantic-understood annotation; the job API validates inputs with it.
    """

    name: str
    item_type: Any = Any

    def __init__(self, registry: Registry, runtime: Runtime, cache: PredictionCache | None = None) -> None:
        self.registry = registry
        self.runtime = runtime
        self.cache = cache

    def version(self, version: str | None = None) -> ModelVersion:
        """The verified version to use (the active one when ``version`` is None)."""
        try:
            return self.registry.get(self.name, version)
        except ModelDegraded as error:
            raise Unavailable(f"model {self.name!r} is degraded: {error}") from None
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

    def cache_key(self, item: Any) -> str | None:
        """A cheap key of one input item, equal for inputs that get equal results; ``None``: do not cache it.

        The default caches nothing. Keys should be short (hash large inputs); they are combined with the model
        name and version by :func:`matserve.cache.cache_key`.
        """
        return None

    def cache_value(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """What to store for one result (JSON-serialisable), or ``None`` not to store it.

        The default stores results without an ``error``, as they are.
        """
        return None if result.get("error") else result

    def from_cache(self, item: Any, value: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the result of ``item`` from a stored value (the default returns a copy of the value)."""
        return dict(value)

    def __call__(self, items: list[Any], version: str | None = None) -> Prediction:
        """Run the whole lifecycle on a batch of items, answering from the cache where possible."""
        model = self.version(version)
        labels = {"model": model.name, "version": model.version}
        try:
            keys, cached = self._read_cache(items, model, labels)
            results = [self._from_cache(item, value) for item, value in zip(items, cached, strict=True)]
            missing = [i for i, result in enumerate(results) if result is None]
            if missing:
                computed = self._run_lifecycle([items[i] for i in missing], model, labels)
                for i, result in zip(missing, computed, strict=True):
                    results[i] = result
                self._write_cache({keys[i]: results[i] for i in missing if keys[i] is not None}, labels)
        except Exception:
            REQUESTS.labels(**labels, outcome="error").inc()
            raise
        REQUESTS.labels(**labels, outcome="ok").inc()
        answered = [r for r in results if r is not None]
        if len(answered) != len(items):  # pragma: no cover - a subclass returned too few results
            raise RuntimeError(f"{self.name}: {len(items)} items but {len(answered)} results")
        failed = sum(1 for r in answered if r.get("error"))
        ITEMS.labels(**labels, outcome="ok").inc(len(answered) - failed)
        ITEMS.labels(**labels, outcome="error").inc(failed)
        return Prediction(model=model.name, version=model.version, results=answered)

    def _from_cache(self, item: Any, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The result rebuilt from a stored value; ``None`` (recompute) if there is none or it does not fit."""
        if value is None:
            return None
        try:
            return self.from_cache(item, value)
        except (KeyError, TypeError, ValueError):  # stored by an incompatible release: treat as a miss
            return None

    def _run_lifecycle(self, items: list[Any], model: ModelVersion, labels: dict[str, str]) -> list[dict[str, Any]]:
        with self._timed(labels, "preprocess"):
            prepared = self.preprocess(items, model)
        with self._timed(labels, "predict"):
            outputs = self.predict(prepared, model)
        with self._timed(labels, "postprocess"):
            return self.postprocess(prepared, outputs)

    def _read_cache(
        self, items: list[Any], model: ModelVersion, labels: dict[str, str]
    ) -> tuple[list[str | None], list[dict[str, Any] | None]]:
        """Cache key of each item (``None``: not cacheable) and its stored value (``None``: not found)."""
        if self.cache is None:
            return [None] * len(items), [None] * len(items)
        with self._timed(labels, "cache_read"):
            keys: list[str | None] = []
            for item in items:
                item_key = self.cache_key(item)
                keys.append(None if item_key is None else cache_key(model.name, model.version, item_key))
            unique = list(dict.fromkeys(key for key in keys if key is not None))
            found = self.cache.get_many(unique)
        values: list[dict[str, Any] | None] = [None] * len(items)
        if found is None:  # bypassed (Redis down): compute everything
            return keys, values
        by_key = dict(zip(unique, found, strict=True))
        looked_up = hits = 0
        for i, key in enumerate(keys):
            if key is not None:
                values[i] = by_key[key]
                looked_up += 1
                hits += values[i] is not None
        CACHE_REQUESTS.labels(**labels, result="hit").inc(hits)
        CACHE_REQUESTS.labels(**labels, result="miss").inc(looked_up - hits)
        return keys, values

    def _write_cache(self, results: dict[str, dict[str, Any] | None], labels: dict[str, str]) -> None:
        if self.cache is None:
            return
        values = {}
        for key, result in results.items():
            value = None if result is None else self.cache_value(result)
            if value is not None:
                values[key] = value
        if values:
            with self._timed(labels, "cache_write"):
                self.cache.set_many(values)

    @staticmethod
    @contextmanager
    def _timed(labels: dict[str, str], stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            STAGE_SECONDS.labels(**labels, stage=stage).observe(time.perf_counter() - started)
