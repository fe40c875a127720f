"""What every route needs from the running service: settings, registry, models, cache, jobs and workers.

One :class:`ServingContext` is built when the service starts (:meth:`ServingContext.start`, from the settings the
app was built with) and stored on the app (``app.state.context``); routes receive it through FastAPI's
dependency :func:`get_context`. In-process tests build their own (``ServingContext.start(Settings(...))``) and
call the app through ``httpx.ASGITransport``, without BentoML.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from pydantic import TypeAdapter

from matserve.cache import PredictionCache, make_cache
from matserve.errors import ModelNotFound, Unavailable
from matserve.jobs import JobStore, make_job_store
from matserve.metrics import MODEL_DEGRADED
from matserve.models.base import Prediction, Runtime, ServedModel
from matserve.registry import Registry
from matserve.runtimes import make_runtime
from matserve.settings import Settings
from matserve.worker import MODEL_CLASSES, EmbeddedWorkers, load_models

logger = logging.getLogger("matserve.service")
INLINE_MAX_ITEMS = 16
"""Batches of at most this many items run on the event loop (in-process ONNX Runtime, no network cache)."""

_Model = TypeVar("_Model", bound=ServedModel)


@dataclass
class ServingContext:
    """The service's state, shared by the routes of every API module.

    Attributes
    ----------
    settings : Settings
        Read once, when the app was built.
    registry, runtime, cache
        The verified model registry, who runs the tensors, and the per-item prediction cache (``None``: off).
    models : dict of str to ServedModel
        Loaded models by registry name.
    jobs : JobStore
        Batch jobs (Redis, or this process's memory).
    workers : EmbeddedWorkers
        Job worker threads of this process.
    item_adapters : dict of str to TypeAdapter
        Validators of one job's inputs, per model.
    inline_ok : bool
        Whether small batches may run on the event loop (nothing they do waits on the network).
    """

    settings: Settings
    registry: Registry
    runtime: Runtime
    cache: PredictionCache | None
    models: dict[str, ServedModel]
    jobs: JobStore
    workers: EmbeddedWorkers
    item_adapters: dict[str, TypeAdapter[Any]]
    inline_ok: bool

    @classmethod
    def start(cls, settings: Settings, *, warm_up: bool = True) -> ServingContext:
        """Load every valid registry model, connect the cache and job store, start the embedded workers.

        ``warm_up`` starts the background warm-ups (EBSD refinement set-up when ``ebsd_preload``, the scattering
        codec's kernels); in-process tests turn it off.
        """
        registry = Registry(settings.models_dir)
        runtime = make_runtime(settings)
        cache = make_cache(settings)
        models = load_models(registry, runtime, cache, settings.models_dir)
        jobs = make_job_store(settings)
        context = cls(
            settings=settings,
            registry=registry,
            runtime=runtime,
            cache=cache,
            models=models,
            jobs=jobs,
            workers=EmbeddedWorkers(jobs, models, settings.embedded_workers, settings.job_chunk_pause_s),
            item_adapters={name: TypeAdapter(list[model.item_type]) for name, model in models.items()},
            inline_ok=runtime.name == "onnxruntime" and getattr(cache, "backend", "none") != "redis",
        )
        context.report_degraded()
        if models:
            context.workers.start()
        if warm_up:
            context._start_warm_ups()
        logger.info(
            "serving %s from %s; cache: %s; jobs: %s store, %d embedded worker(s)",
            ", ".join(models) or "nothing",
            settings.models_dir,
            cache.backend if cache is not None else "off",
            jobs.backend,
            len(context.workers.threads),
        )
        return context

    def _start_warm_ups(self) -> None:
        from matserve.codecs.scattering import warm_up as warm_up_scattering_codec
        from matserve.models.ebsd_indexer import warm_up as warm_up_ebsd

        if self.settings.ebsd_preload and "ebsd_indexer" in self.models:
            card = self.models["ebsd_indexer"].card()
            threading.Thread(target=warm_up_ebsd, args=(card,), name="matserve-ebsd-warm-up", daemon=True).start()
        if "scattering_sorter" in self.models:  # compile the codec's kernels before the first image arrives
            threading.Thread(target=warm_up_scattering_codec, name="matserve-scattering-warm-up", daemon=True).start()

    def stop(self) -> None:
        """Stop the embedded workers and close the job store."""
        self.workers.stop()
        self.jobs.close()

    def model(self, name: str) -> ServedModel:
        """The served model ``name``: 404 when unknown, 503 when degraded or not loaded here."""
        if name not in self.models and name in self.registry.degraded:
            raise Unavailable(f"model {name!r} is degraded: {self.registry.degraded[name]}")
        if name not in self.models:
            if name not in {model_class.name for model_class in MODEL_CLASSES}:
                known = ", ".join(model_class.name for model_class in MODEL_CLASSES)
                raise ModelNotFound(f"unknown model {name!r}; models: {known}")
            raise Unavailable(f"model {name!r} is not loaded on this server; see GET /v1/models")
        return self.models[name]

    def typed_model(self, name: str, model_class: type[_Model]) -> _Model:
        """As :meth:`model`, typed as the lifecycle class the route needs."""
        model = self.model(name)
        if not isinstance(model, model_class):  # pragma: no cover - MODEL_CLASSES maps names to classes
            raise TypeError(f"{name} is served by {type(model).__name__}, not {model_class.__name__}")
        return model

    async def predict(self, name: str, items: list[Any], version: str | None) -> Prediction:
        """Run a model; small in-process batches inline on the event loop, everything else on a worker thread.

        With in-process ONNX Runtime and no network cache, a batch of up to ``INLINE_MAX_ITEMS`` takes a few
        milliseconds of CPU and the thread hand-off would be a large share of it (measured: batch-1 p50 from
        1.05x to 0.95x of direct Triton HTTP). Anything that waits on the network (Triton, Redis) or takes
        longer goes to a thread, so that the event loop never blocks on I/O.
        """
        model = self.model(name)
        if len(items) <= INLINE_MAX_ITEMS and self.inline_ok:
            return model(items, version)
        return await anyio.to_thread.run_sync(model, items, version)

    def registry_status(self) -> dict[str, dict[str, Any]]:
        """Per model: the active version (``None`` without any folder), valid versions, and ``degraded`` (the
        reason, or ``None``)."""
        names = sorted(set(self.registry.names()) | set(self.registry.degraded))
        return {name: {"active_version": self.registry.intended_version(name), "versions": self.registry.versions(name),
                       "degraded": self.registry.degraded.get(name)} for name in names}  # fmt: skip

    def report_degraded(self) -> None:
        """Set the ``matserve_model_degraded`` gauge of every model."""
        for model_class in MODEL_CLASSES:
            MODEL_DEGRADED.labels(model=model_class.name).set(1 if model_class.name in self.registry.degraded else 0)


def get_context(request: Request) -> ServingContext:
    """FastAPI dependency: the context of the app serving ``request`` (503 while the service is starting)."""
    context = getattr(request.app.state, "context", None)
    if context is None:
        raise Unavailable("the service is starting; retry in a few seconds")
    return context


Context = Annotated[ServingContext, Depends(get_context)]
"""A route parameter ``context: Context`` receives the app's :class:`ServingContext`."""
