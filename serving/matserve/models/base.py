"""The lifecycle every served model shares (after KServe's ``Model``).

``load -> [cache read] -> preprocess -> predict -> postprocess -> [cache write]``; each stage is timed
into the ``matserve_stage_duration_seconds`` histogram per model and version. Subclasses hold only domain
logic (their codec); transport lives in the service.

One entry point: :meth:`ServedModel.__call__` ``(items, version=None, *, options=None)``, after KServe's
``Model.__call__(..., verb=...)``. ``options`` is the model's frozen options dataclass (e.g.
:class:`~matserve.models.ebsd_indexer.EbsdOptions`); :meth:`~ServedModel.preprocess` and
:meth:`~ServedModel.postprocess` receive it, and :meth:`~ServedModel.extras` may answer arrays besides the
results (:attr:`Prediction.extras`). Every call counts one request (``matserve_requests_total``, ok or error) and
its items (``matserve_items_total``: results without and with an ``error``); a model's own variants (e.g.
:meth:`~matserve.models.ebsd_indexer.EbsdIndexerModel.index`) are thin wrappers over it, and the one that cannot
be (a chunked scan) uses the same helpers (:meth:`ServedModel._request`, :meth:`ServedModel._timed`).

Caching is generic, and only for the options-free call (``options=None``, the batch-job path): a subclass that
implements :meth:`ServedModel.cache_key` (a cheap, normalised key of one input item, e.g. the reduced formula)
gets per-item caching of its results for free. Items found in the cache skip the lifecycle; the others run
through it in one batch and are stored afterwards (per-item errors are not stored). A call with options (a
saliency PNG, a refined orientation, a request's PC or setup) neither reads nor writes the cache: its results
are not the plain ones. Cache failures never fail a prediction (see :mod:`matserve.cache`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from matserve.cache import PredictionCache, cache_key
from matserve.errors import ModelUnavailable, VersionNotFound
from matserve.metrics import CACHE_REQUESTS, ITEMS, REQUESTS, STAGE_SECONDS
from matserve.registry import ModelDegraded, ModelVersion, Registry

Prepared = TypeVar("Prepared")
Options = TypeVar("Options")
"""A model's per-call options: a frozen dataclass (``None`` for models that take none)."""


class Runtime(Protocol):
    """What a model needs from a runtime: run named tensors through a registry version."""

    name: str

    def load(self, model: ModelVersion) -> Any: ...

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Prediction:
    """What a model returns: who answered and one result per input item.

    Attributes
    ----------
    model, version : str
        Registry name and version that answered.
    results : list of dict
        One JSON-ready result per input item, in input order (refused items carry ``error``).
    extras : dict
        What the model answered besides the results for the options given (:meth:`ServedModel.extras`, e.g.
        arrays for pictures); empty without options.
    """

    model: str
    version: str
    results: list[dict[str, Any]]
    extras: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ItemTally:
    """Items of one request, counted into ``matserve_items_total`` when the request ends well."""

    ok: int = 0
    failed: int = 0

    def count(self, results: Iterable[dict[str, Any]]) -> None:
        """Count result dicts: those with a truthy ``error`` as failed, the others as ok."""
        for result in results:
            if result.get("error"):
                self.failed += 1
            else:
                self.ok += 1


class ServedModel(ABC, Generic[Prepared, Options]):
    """A registry model behind a runtime.

    Type parameters: ``Prepared``, what :meth:`preprocess` hands on; ``Options``, the model's frozen options
    dataclass (``None`` for models without options).

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
            raise ModelUnavailable(f"model {self.name!r} is degraded: {error}") from None
        except KeyError as error:
            raise VersionNotFound(str(error.args[0])) from None

    def card(self, version: str | None = None) -> dict[str, Any]:
        """The model card of a version."""
        return self.version(version).card

    def load(self, version: str | None = None) -> ModelVersion:
        """Make a version ready to run (creates the runtime session)."""
        model = self.version(version)
        self.runtime.load(model)
        return model

    @abstractmethod
    def preprocess(self, items: list[Any], model: ModelVersion, options: Options | None = None) -> Prepared:
        """Domain input -> tensors plus whatever postprocess needs (per-item errors included).

        ``options`` is ``None`` on the batch-job path (and from Triton's Python backend, which calls the stages
        itself).
        """

    @abstractmethod
    def predict(self, prepared: Prepared, model: ModelVersion) -> dict[str, np.ndarray]:
        """Run the tensors of ``prepared`` through the runtime."""

    @abstractmethod
    def postprocess(
        self, prepared: Prepared, outputs: dict[str, np.ndarray], options: Options | None = None
    ) -> list[dict[str, Any]]:
        """Tensors -> one result dict per input item, in input order."""

    def extras(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: Options) -> dict[str, Any]:
        """What a call with ``options`` answers besides the results (:attr:`Prediction.extras`); default nothing.

        Called after :meth:`postprocess`, inside its timing, only when options are given (the lifecycle then runs
        on the whole batch, so positions are those of the request's items).
        """
        return {}

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

    def __call__(self, items: list[Any], version: str | None = None, *, options: Options | None = None) -> Prediction:
        """Run the whole lifecycle on a batch of items: the one timed and counted entry point of every model call.

        Parameters
        ----------
        items : list
            Input items, of the model's :attr:`item_type` (or what its options say, e.g. decoded arrays).
        version : str, optional
            Registry version (default the active one).
        options : Options, optional
            The model's options dataclass. ``None``: the plain (batch-job) call, answered from the cache where
            possible; with options, every item runs through the lifecycle and nothing is cached.

        Returns
        -------
        Prediction
            One result per item, in order, and :meth:`extras` when options were given.
        """
        model = self.version(version)
        labels = self._labels(model)
        extras: dict[str, Any] = {}
        with self._request(labels) as tally:
            if options is None:
                results = self._cached_lifecycle(items, model, labels)
            else:
                results, extras = self._run_lifecycle(items, model, labels, options)
            if len(results) != len(items):  # pragma: no cover - a subclass returned too few results
                raise RuntimeError(f"{self.name}: {len(items)} items but {len(results)} results")
            tally.count(results)
        return Prediction(model=model.name, version=model.version, results=results, extras=extras)

    def _cached_lifecycle(self, items: list[Any], model: ModelVersion, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The options-free lifecycle: cached items from the cache, the others computed in one batch and stored."""
        keys, cached = self._read_cache(items, model, labels)
        results = [self._from_cache(item, value) for item, value in zip(items, cached, strict=True)]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            computed, _ = self._run_lifecycle([items[i] for i in missing], model, labels, None)
            for i, result in zip(missing, computed, strict=True):
                results[i] = result
            self._write_cache({keys[i]: results[i] for i in missing if keys[i] is not None}, labels)
        return [r for r in results if r is not None]

    def _from_cache(self, item: Any, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The result rebuilt from a stored value; ``None`` (recompute) if there is none or it does not fit."""
        if value is None:
            return None
        try:
            return self.from_cache(item, value)
        except (KeyError, TypeError, ValueError):  # stored by an incompatible release: treat as a miss
            return None

    def _run_lifecycle(
        self, items: list[Any], model: ModelVersion, labels: dict[str, str], options: Options | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """preprocess -> predict -> postprocess, each timed; the results and the :meth:`extras`."""
        with self._timed(labels, "preprocess"):
            prepared = self.preprocess(items, model, options)
        with self._timed(labels, "predict"):
            outputs = self.predict(prepared, model)
        with self._timed(labels, "postprocess"):
            results = self.postprocess(prepared, outputs, options)
            extras = self.extras(prepared, outputs, options) if options is not None else {}
        return results, extras

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
    def _labels(model: ModelVersion) -> dict[str, str]:
        """The metric labels of a version: ``{"model": ..., "version": ...}``."""
        return {"model": model.name, "version": model.version}

    @staticmethod
    @contextmanager
    def _request(labels: dict[str, str]) -> Iterator[ItemTally]:
        """Count one request: ``matserve_requests_total`` ``error`` if the block raises, else ``ok`` and the items
        the block put in the yielded :class:`ItemTally` (``matserve_items_total`` ok / error)."""
        tally = ItemTally()
        try:
            yield tally
        except Exception:
            REQUESTS.labels(**labels, outcome="error").inc()
            raise
        REQUESTS.labels(**labels, outcome="ok").inc()
        ITEMS.labels(**labels, outcome="ok").inc(tally.ok)
        ITEMS.labels(**labels, outcome="error").inc(tally.failed)

    @staticmethod
    @contextmanager
    def _timed(labels: dict[str, str], stage: str) -> Iterator[None]:
        """Time the block into ``matserve_stage_duration_seconds`` as ``stage`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            STAGE_SECONDS.labels(**labels, stage=stage).observe(time.perf_counter() - started)
