"""Job workers: take chunks from the job store, predict them, record the results.

Two ways to run them (both load the models in-process, exactly as the API server does):

* ``matserve worker``: a separate process (needs ``REDIS_URL``); run as many as you like, anywhere that reaches
  Redis. SIGTERM or Ctrl-C finishes the current chunk and exits; a worker killed mid-chunk leaves that chunk
  to be taken over by another worker after ``MATSERVE_JOB_CLAIM_IDLE_S``.
* embedded: ``MATSERVE_EMBEDDED_WORKERS`` threads inside the API server (default 1), so that ``matserve serve``
  alone completes jobs; the only way jobs run without Redis. Kubernetes sets it to 0 and runs worker
  Deployments instead.

Predictions go through :class:`~matserve.models.base.ServedModel`, so jobs use and fill the prediction cache.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Mapping
from types import FrameType

from matserve.cache import PredictionCache, make_cache
from matserve.errors import ModelUnavailable, Unavailable
from matserve.jobs import JobStore, JobTask, RedisJobStore
from matserve.metrics import JOB_CHUNKS, JOB_ITEMS, JOBS
from matserve.models.base import Runtime, ServedModel
from matserve.models.ebsd_indexer import EbsdIndexerModel
from matserve.models.formation_enthalpy import FormationEnthalpyModel
from matserve.models.scattering_sorter import ScatteringSorterModel
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry
from matserve.runtimes import make_runtime
from matserve.settings import Settings

logger = logging.getLogger("matserve.worker")

MODEL_CLASSES: tuple[type[ServedModel], ...] = (FormationEnthalpyModel, XrdPhaseModel, XrdNoveltyModel,
                                                 EbsdIndexerModel, ScatteringSorterModel)  # fmt: skip
"""Every model the server and the workers serve."""
POLL_S = 1.0
"""How long a worker waits for a chunk before checking whether it should stop, in seconds."""
OUTAGE_BACKOFF_S = 1.0
"""Pause after the job store failed, in seconds."""


def load_models(
    registry: Registry, runtime: Runtime, cache: PredictionCache | None, models_dir: object = None
) -> dict[str, ServedModel]:
    """Every model with a valid registry version, loaded (a model that fails to load is logged and left out).

    A degraded model (its active version refused, see :mod:`matserve.registry`) is kept but not loaded: requests
    that pin a valid version are answered, the others get a 503 with the reason, until the registry is reloaded.
    """
    models: dict[str, ServedModel] = {}
    for model_class in MODEL_CLASSES:
        if model_class.name not in registry.names():
            logger.error("model %s has no valid version in %s; it is not served", model_class.name, models_dir)
            continue
        served = model_class(registry, runtime, cache=cache)
        if model_class.name in registry.degraded:
            models[model_class.name] = served
            continue
        try:
            served.load()
        except Exception:  # a broken graph must not stop the other models
            logger.exception("model %s failed to load; it is not served", model_class.name)
            continue
        models[model_class.name] = served
    return models


def worker_name(suffix: str = "") -> str:
    """A consumer name unique to this process: ``host-pid-random[-suffix]``."""
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return f"{name}-{suffix}" if suffix else name


class JobWorker:
    """A loop that runs chunks until told to stop.

    Parameters
    ----------
    store : JobStore
        Where chunks come from and results go.
    models : mapping of str to ServedModel
        Loaded models by name.
    name : str
        Consumer name (unique per worker).
    chunk_pause_s : float
        Seconds to sleep after each chunk (throttling; 0 for none).
    """

    def __init__(
        self, store: JobStore, models: Mapping[str, ServedModel], name: str, chunk_pause_s: float = 0.0
    ) -> None:
        self.store = store
        self.models = models
        self.name = name
        self.chunk_pause_s = chunk_pause_s

    def run(self, stop: threading.Event) -> None:
        """Take and run chunks until ``stop`` is set; survives job store outages (one warning per outage)."""
        logger.info("job worker %s started (%s store)", self.name, self.store.backend)
        outage = False
        while not stop.is_set():
            try:
                task = self.store.next_task(self.name, POLL_S)
                if outage:
                    logger.warning("job worker %s: the job store is reachable again", self.name)
                    outage = False
                if task is None:
                    continue
                self.run_task(task)
            except (Unavailable, ModelUnavailable) as error:
                if not outage:
                    logger.warning("job worker %s: %s; retrying every %.1f s", self.name, error, OUTAGE_BACKOFF_S)
                    outage = True
                stop.wait(OUTAGE_BACKOFF_S)
                continue
            except Exception:
                logger.exception("job worker %s: unexpected error; going on", self.name)
                stop.wait(OUTAGE_BACKOFF_S)
                continue
            if self.chunk_pause_s > 0:
                stop.wait(self.chunk_pause_s)
        logger.info("job worker %s stopped", self.name)

    def run_task(self, task: JobTask) -> None:
        """Run one chunk and record it.

        A model error fails the job. :class:`~matserve.errors.Unavailable` (job store unreachable, model not
        loaded here, remote runtime down) propagates without acknowledging the chunk, which is then taken over
        after ``MATSERVE_JOB_CLAIM_IDLE_S`` (by this or another worker; the in-memory store queues it again) and
        fails its job only after ``MATSERVE_JOB_MAX_ATTEMPTS`` starts.
        """
        chunk = self.store.start(task)
        if chunk is None:  # job cancelled, failed, finished or expired, or chunk already done
            JOB_CHUNKS.labels(outcome="skipped").inc()
            self.store.ack(task)
            return
        where = f"chunk {task.chunk} (items {chunk.offset}-{chunk.offset + len(chunk.inputs) - 1})"
        try:
            model = self.models.get(chunk.model)
            if model is None:
                raise Unavailable(f"model {chunk.model!r} is not loaded on job worker {self.name}")
            prediction = model(chunk.inputs, chunk.version)
        except (
            Unavailable,
            ModelUnavailable,
        ) as error:  # transient (e.g. a remote runtime is down): leave the chunk for a retry
            logger.warning("job %s: %s not run: %s; it will be retried", task.job_id, where, error)
            self.store.release(task)
            raise
        except Exception as error:
            logger.exception("job %s: %s failed", task.job_id, where)
            self.store.fail(task, f"{where} failed: {type(error).__name__}: {error}")
            self.store.ack(task)
            JOB_CHUNKS.labels(outcome="failed").inc()
            JOBS.labels(model=chunk.model, event="failed").inc()
            return
        state = self.store.complete(task, prediction.results)
        self.store.ack(task)
        JOB_CHUNKS.labels(outcome="done").inc()
        JOB_ITEMS.labels(model=chunk.model).inc(len(prediction.results))
        if state == "succeeded":
            JOBS.labels(model=chunk.model, event="succeeded").inc()
            logger.info("job %s succeeded", task.job_id)


class EmbeddedWorkers:
    """Worker threads inside the API server process.

    Parameters
    ----------
    store : JobStore
    models : mapping of str to ServedModel
    count : int
        Number of threads (0: none).
    chunk_pause_s : float
        Seconds each thread sleeps after a chunk.
    """

    def __init__(self, store: JobStore, models: Mapping[str, ServedModel], count: int, chunk_pause_s: float) -> None:
        self.stop_event = threading.Event()
        self.workers = [
            JobWorker(store, models, worker_name(f"embedded{i}"), chunk_pause_s=chunk_pause_s) for i in range(count)
        ]
        self.threads = [
            threading.Thread(target=worker.run, args=(self.stop_event,), name=f"matserve-{worker.name}", daemon=True)
            for worker in self.workers
        ]

    def start(self) -> None:
        """Start the threads."""
        for thread in self.threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the threads to stop after their current chunk and wait up to ``timeout_s`` seconds in all."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=timeout_s / max(len(self.threads), 1))


def main(settings: Settings | None = None) -> int:
    """``matserve worker``: run one job worker in this process until SIGTERM/SIGINT; returns the exit code."""
    settings = settings or Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if not settings.redis_url:
        logger.error(
            "matserve worker needs REDIS_URL (jobs are shared through Redis); without Redis, jobs run in the "
            "API server's embedded worker threads (MATSERVE_EMBEDDED_WORKERS)"
        )
        return 2
    registry = Registry(settings.models_dir)
    runtime = make_runtime(settings)
    models = load_models(registry, runtime, make_cache(settings), settings.models_dir)
    if not models:
        logger.error("no model could be loaded from %s", settings.models_dir)
        return 1
    store = RedisJobStore(
        settings.redis_url,
        ttl_s=settings.job_ttl_s,
        max_attempts=settings.job_max_attempts,
        claim_idle_s=settings.job_claim_idle_s,
    )
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
        logger.info("metrics on port %d", settings.worker_metrics_port)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the current chunk", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("serving jobs for %s", ", ".join(models))
    JobWorker(store, models, worker_name(), chunk_pause_s=settings.job_chunk_pause_s).run(stop)
    store.close()
    return 0
