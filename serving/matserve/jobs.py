"""Batch jobs: a large list of inputs predicted in chunks by workers, with progress and paged results.

(Over 500 lines: the job store interface and both its backends, Redis and memory, which must stay in step.)

A job is split into chunks of ``chunk_size`` inputs (``MATSERVE_JOB_CHUNK_SIZE``, 1000). Workers
(:mod:`matserve.worker`: ``matserve worker`` processes, or threads embedded in the API server) take chunks one
at a time, run them through the model (the version pinned when the job was submitted) and record each chunk's
results; progress (``done``/``failed`` items) moves per chunk. States::

    queued -> running -> succeeded
       \\          \\-> failed     (a chunk raised, or was started job_max_attempts times without finishing)
        \\-------------> cancelled (DELETE /v1/jobs/{id}; remaining chunks are skipped)

Two stores with one interface (:class:`JobStore`):

* :class:`RedisJobStore` (``REDIS_URL`` set): durable. Each job is a hash plus a hash of chunk inputs and a hash
  of chunk results (all sharing the ``{job id}`` hash tag); chunks are entries of a Redis Stream read by the
  consumer group ``matserve-workers``. A worker acknowledges (and deletes) an entry only after the chunk's
  results are stored, so a worker killed mid-chunk leaves its entry pending, and another worker takes it over
  with ``XAUTOCLAIM`` once it has been idle ``MATSERVE_JOB_CLAIM_IDLE_S`` seconds. State changes are Lua scripts
  (atomic), and storing a chunk's results is idempotent (``HSETNX``), so a finished chunk is never redone nor
  counted twice. Jobs survive API server and worker restarts; everything expires ``MATSERVE_JOB_TTL_S`` after
  the job finishes (7 days). Needs a standalone Redis (or a primary), with persistence configured as you want
  jobs to survive Redis itself restarting.
* :class:`MemoryJobStore` (no Redis): the same behaviour inside the API process, run by its embedded worker
  threads; not durable (``"durable": false``): jobs are lost when the server stops.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from matserve.errors import MatserveError, Unavailable
from matserve.settings import Settings

logger = logging.getLogger("matserve.jobs")

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")

STREAM = "matserve:jobs:chunks"
"""Redis Stream of chunks to run: entries ``{job, chunk}``."""
GROUP = "matserve-workers"
"""Consumer group every worker reads :data:`STREAM` through."""
MEMORY_MAX_FINISHED_JOBS = 100
"""Finished jobs the in-memory store keeps (the oldest go first, besides the TTL)."""


class JobNotFound(MatserveError):
    """Unknown or expired job (404)."""

    status, error_type = 404, "not_found"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-01-01T12:00:00.000+00:00``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def split_chunks(items: Sequence[Any], chunk_size: int) -> list[list[Any]]:
    """Consecutive chunks of at most ``chunk_size`` items, in order."""
    return [list(items[start : start + chunk_size]) for start in range(0, len(items), chunk_size)]


def count_failed(results: Sequence[dict[str, Any]]) -> int:
    """Items whose result carries a per-item ``error``."""
    return sum(1 for result in results if result.get("error"))


@dataclass(frozen=True)
class JobInfo:
    """What ``GET /v1/jobs/{id}`` reports (times are ISO 8601 UTC strings).

    Attributes
    ----------
    job_id, model, version : str
        The job, its model and the model version pinned at submission.
    state : str
        ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
    total, done, failed : int
        Inputs in the job, inputs predicted so far, and how many of those got a per-item error.
    chunk_size, chunks_total, chunks_done : int
        Inputs per chunk, chunks in the job, chunks finished.
    chunk_starts : int
        Times a worker started a chunk; above ``chunks_done`` when chunks were taken over from dead workers.
    created_at, started_at, finished_at : str or None
        Submission, first chunk started, and terminal state reached.
    error : str or None
        Why the job failed.
    durable : bool
        Whether the job survives a server restart (Redis store).
    """

    job_id: str
    model: str
    version: str
    state: str
    total: int
    done: int
    failed: int
    chunk_size: int
    chunks_total: int
    chunks_done: int
    chunk_starts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    durable: bool

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.state in TERMINAL_STATES

    @classmethod
    def queued(cls, model: str, version: str, total: int, chunk_size: int, chunks_total: int, durable: bool) -> JobInfo:
        """A new job, just submitted: a fresh id, nothing done yet."""
        return cls(
            job_id=uuid.uuid4().hex, model=model, version=version, state="queued", total=total, done=0, failed=0,
            chunk_size=chunk_size, chunks_total=chunks_total, chunks_done=0, chunk_starts=0, created_at=utc_now(),
            started_at=None, finished_at=None, error=None, durable=durable,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class JobTask:
    """One chunk handed to a worker.

    Attributes
    ----------
    job_id : str
    chunk : int
        Chunk index (0-based); its inputs are ``chunk * chunk_size`` onwards.
    entry_id : str or None
        The Redis Stream entry, acknowledged when the chunk is finished.
    """

    job_id: str
    chunk: int
    entry_id: str | None = None


@dataclass(frozen=True)
class StartedChunk:
    """A chunk a worker may run now: its job's model, pinned version and inputs."""

    task: JobTask
    model: str
    version: str
    offset: int
    inputs: list[Any]


class JobStore(ABC):
    """Job state, chunk queue and results.

    Parameters
    ----------
    ttl_s : int
        Seconds a job and its results are kept (renewed when the job finishes).
    max_attempts : int
        A chunk started more often than this without finishing fails its job.
    """

    backend: str = "none"
    durable: bool = False

    def __init__(self, ttl_s: int, max_attempts: int) -> None:
        self.ttl_s = ttl_s
        self.max_attempts = max_attempts

    # -- API side ----------------------------------------------------------------------------------------------

    @abstractmethod
    def submit(self, model: str, version: str, items: Sequence[Any], chunk_size: int) -> JobInfo:
        """Record a job and queue its chunks; returns it in state ``queued``."""

    @abstractmethod
    def status(self, job_id: str) -> JobInfo | None:
        """The job, or ``None`` if unknown or expired."""

    @abstractmethod
    def results(self, job: JobInfo, offset: int, limit: int) -> list[dict[str, Any] | None]:
        """Results of items ``offset`` to ``offset + limit`` (clipped to the job), ``None`` where not computed."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobInfo | None:
        """Cancel a queued or running job (a finished one is left as it is); ``None`` if unknown."""

    # -- worker side -------------------------------------------------------------------------------------------

    @abstractmethod
    def next_task(self, consumer: str, block_s: float) -> JobTask | None:
        """The next chunk for worker ``consumer`` (a stale one first), waiting up to ``block_s`` seconds."""

    @abstractmethod
    def start(self, task: JobTask) -> StartedChunk | None:
        """Mark the chunk started; ``None`` if it must be skipped (job finished, cancelled, gone; chunk done)."""

    @abstractmethod
    def complete(self, task: JobTask, results: list[dict[str, Any]]) -> str:
        """Store a chunk's results (once: a repeat is ignored) and update progress; returns the job state."""

    @abstractmethod
    def fail(self, task: JobTask, message: str) -> None:
        """Fail the chunk's job with ``message`` (if it is still active)."""

    @abstractmethod
    def ack(self, task: JobTask) -> None:
        """Forget the task: it will not be handed out again."""

    def release(self, task: JobTask) -> None:  # noqa: B027 - Redis needs nothing: the entry stays pending
        """Give a started task back, to be retried (Redis: by whoever claims it once it is idle)."""

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about jobs."""
        return {"backend": self.backend, "durable": self.durable, "ttl_s": self.ttl_s}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ------------------------------------------------------------------------------------------------------------
# Redis
# ------------------------------------------------------------------------------------------------------------

# KEYS: job, inputs, results, attempts. ARGV: chunk, now, max_attempts.
# Returns {state} to skip, or {"running", inputs_json, model, version, chunk_size}.
_START_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'queued' and state ~= 'running' then return {state} end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'chunk_done'} end
local inputs = redis.call('HGET', KEYS[2], ARGV[1])
if not inputs then return {'missing'} end
local attempts = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('HINCRBY', KEYS[1], 'chunk_starts', 1)
if attempts > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[2], 'error',
    'chunk ' .. ARGV[1] .. ' was started ' .. (attempts - 1) .. ' times without finishing (its workers died or hung)')
  redis.call('DEL', KEYS[2], KEYS[4])
  return {'failed'}
end
if state == 'queued' then redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[2]) end
local job = redis.call('HMGET', KEYS[1], 'model', 'version', 'chunk_size')
return {'running', inputs, job[1], job[2], job[3]}
"""

# KEYS: job, inputs, results, attempts. ARGV: chunk, results_json, n_items, n_failed, now, ttl_s.
_COMPLETE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'queued' and state ~= 'running' then return state end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return state end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'done', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[6])
local chunks_done = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
if chunks_done >= tonumber(redis.call('HGET', KEYS[1], 'chunks_total')) then
  redis.call('HSET', KEYS[1], 'state', 'succeeded', 'finished_at', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('DEL', KEYS[2], KEYS[4])
  return 'succeeded'
end
return 'running'
"""

# KEYS: job, inputs, results, attempts. ARGV: new_state, now, error ('' for none), ttl_s.
_FINISH_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'queued' and state ~= 'running' then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return ARGV[1]
"""


def _keys(job_id: str) -> list[str]:
    """Job, inputs, results and attempts keys; ``{job_id}`` is a hash tag (one cluster slot per job)."""
    base = f"matserve:job:{{{job_id}}}"
    return [base, f"{base}:inputs", f"{base}:results", f"{base}:attempts"]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisJobStore(JobStore):
    """Durable jobs in Redis (hashes for state, inputs and results; a Stream with a consumer group for chunks).

    Parameters
    ----------
    url : str
        ``redis://...``.
    ttl_s : int
        Seconds a job and its results are kept after it finishes (also the lifetime of a job never run).
    max_attempts : int
        Starts of one chunk after which its job fails.
    claim_idle_s : float
        Seconds after which a chunk taken but not finished by a worker is handed to another one.
    timeout_s : float
        Socket timeout of ordinary calls, in seconds (blocking reads add their block time).

    Raises
    ------
    matserve.errors.Unavailable
        From every method, when Redis cannot be reached (the API answers 503).
    """

    backend = "redis"
    durable = True

    def __init__(self, url: str, ttl_s: int, max_attempts: int, claim_idle_s: float, timeout_s: float = 5.0) -> None:
        super().__init__(ttl_s, max_attempts)
        self.claim_idle_s = claim_idle_s
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 1.0),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            client_name="matserve-jobs",
        )
        self._timeout_s = timeout_s
        self._start = self.client.register_script(_START_LUA)
        self._complete = self.client.register_script(_COMPLETE_LUA)
        self._finish = self.client.register_script(_FINISH_LUA)
        self._next_claim_s = 0.0  # monotonic time of the next XAUTOCLAIM
        self._group_ready = False

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Redis call; Redis failures become :class:`Unavailable` (a missing consumer group is recreated)."""
        for attempt in range(2):
            try:
                return function(*args, **kwargs)
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error) or attempt:
                    raise
                self._group_ready = False  # Redis lost its data (restarted without persistence): recreate the group
                self._ensure_group()
            except (redis.RedisError, OSError) as error:
                self._group_ready = False
                raise Unavailable(f"the job store (Redis) is unreachable while trying to {what}: {error}") from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        except (redis.RedisError, OSError) as error:
            raise Unavailable(f"the job store (Redis) is unreachable: {error}") from error
        self._group_ready = True

    def submit(self, model: str, version: str, items: Sequence[Any], chunk_size: int) -> JobInfo:
        self._ensure_group()
        chunks = split_chunks(items, chunk_size)
        job = JobInfo.queued(model, version, len(items), chunk_size, len(chunks), durable=True)
        job_key, inputs_key, _, _ = _keys(job.job_id)
        fields = {k: v for k, v in job.to_dict().items() if v is not None and k != "durable"}
        pipeline = self.client.pipeline(transaction=True)  # all or nothing: no half-queued job
        pipeline.hset(job_key, mapping=fields)
        pipeline.hset(inputs_key, mapping={str(i): json.dumps(chunk) for i, chunk in enumerate(chunks)})
        pipeline.expire(job_key, self.ttl_s)
        pipeline.expire(inputs_key, self.ttl_s)
        for i in range(len(chunks)):
            pipeline.xadd(STREAM, {"job": job.job_id, "chunk": str(i)})
        self._call("submit a job", pipeline.execute)
        return job

    def status(self, job_id: str) -> JobInfo | None:
        fields = self._call("read a job", self.client.hgetall, _keys(job_id)[0])
        if not fields:
            return None
        values = {_text(k): _text(v) for k, v in fields.items()}
        numbers = ("total", "done", "failed", "chunk_size", "chunks_total", "chunks_done", "chunk_starts")
        return JobInfo(
            job_id=job_id, model=values["model"], version=values["version"], state=values["state"],
            **{name: int(values.get(name) or 0) for name in numbers},
            created_at=values["created_at"], started_at=values.get("started_at"),
            finished_at=values.get("finished_at"), error=values.get("error"), durable=True,
        )  # fmt: skip

    def results(self, job: JobInfo, offset: int, limit: int) -> list[dict[str, Any] | None]:
        stop = min(offset + limit, job.total)
        if offset >= stop:
            return []
        first, last = offset // job.chunk_size, (stop - 1) // job.chunk_size
        chunk_ids = [str(i) for i in range(first, last + 1)]
        raw = self._call("read job results", self.client.hmget, _keys(job.job_id)[2], chunk_ids)
        return _page(job, offset, stop, {first + k: None if r is None else json.loads(r) for k, r in enumerate(raw)})

    def cancel(self, job_id: str) -> JobInfo | None:
        self._call("cancel a job", self._finish, keys=_keys(job_id), args=["cancelled", utc_now(), "", self.ttl_s])
        return self.status(job_id)

    def next_task(self, consumer: str, block_s: float) -> JobTask | None:
        self._ensure_group()
        now_s = time.monotonic()
        if now_s >= self._next_claim_s:
            reply = self._call(
                "claim stale chunks",
                self.client.xautoclaim,
                STREAM,
                GROUP,
                consumer,
                min_idle_time=int(self.claim_idle_s * 1000),
                start_id="0-0",
                count=1,
            )
            claimed = reply[1] if reply else []
            if claimed:
                entry_id, fields = claimed[0]
                logger.info("worker %s took over chunk entry %s from a worker that did not finish it", consumer,
                            _text(entry_id))  # fmt: skip
                return self._task(entry_id, fields)
            self._next_claim_s = now_s + max(self.claim_idle_s / 4, 0.25)
        reply = self._call(
            "read the chunk queue",
            self.client.xreadgroup,
            GROUP,
            consumer,
            {STREAM: ">"},
            count=1,
            block=max(int(block_s * 1000), 1),
        )
        if not reply:
            return None
        _stream, entries = reply[0]
        if not entries:
            return None
        entry_id, fields = entries[0]
        return self._task(entry_id, fields)

    @staticmethod
    def _task(entry_id: bytes | str, fields: dict[bytes, bytes]) -> JobTask:
        values = {_text(k): _text(v) for k, v in (fields or {}).items()}
        return JobTask(job_id=values.get("job") or "", chunk=int(values.get("chunk") or 0), entry_id=_text(entry_id))

    def start(self, task: JobTask) -> StartedChunk | None:
        reply = self._call(
            "start a chunk", self._start, keys=_keys(task.job_id), args=[task.chunk, utc_now(), self.max_attempts]
        )
        if _text(reply[0]) != "running":
            logger.debug("skipping chunk %d of job %s: %s", task.chunk, task.job_id, _text(reply[0]))
            return None
        inputs, model, version, chunk_size = json.loads(reply[1]), _text(reply[2]), _text(reply[3]), int(reply[4])
        return StartedChunk(task=task, model=model or "", version=version or "", offset=task.chunk * chunk_size,
                            inputs=inputs)  # fmt: skip

    def complete(self, task: JobTask, results: list[dict[str, Any]]) -> str:
        args = [task.chunk, json.dumps(results), len(results), count_failed(results), utc_now(), self.ttl_s]
        return _text(self._call("store chunk results", self._complete, keys=_keys(task.job_id), args=args)) or ""

    def fail(self, task: JobTask, message: str) -> None:
        self._call("fail a job", self._finish, keys=_keys(task.job_id), args=["failed", utc_now(), message, self.ttl_s])

    def ack(self, task: JobTask) -> None:
        if task.entry_id is None:
            return
        pipeline = self.client.pipeline(transaction=False)
        pipeline.xack(STREAM, GROUP, task.entry_id)
        pipeline.xdel(STREAM, task.entry_id)
        self._call("acknowledge a chunk", pipeline.execute)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "claim_idle_s": self.claim_idle_s}

    def close(self) -> None:
        self.client.close()


def _page(job: JobInfo, offset: int, stop: int, chunks: dict[int, list[dict[str, Any]] | None]) -> list[Any]:
    """Items ``offset:stop`` of a job from its chunks' results (``None`` for chunks not stored)."""
    page: list[dict[str, Any] | None] = []
    for position in range(offset, stop):
        chunk, within = divmod(position, job.chunk_size)
        results = chunks.get(chunk)
        page.append(None if results is None else results[within])
    return page


# ------------------------------------------------------------------------------------------------------------
# In memory
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _MemoryJob:
    info: JobInfo
    inputs: dict[int, list[Any]]
    results: dict[int, list[dict[str, Any]]]
    attempts: dict[int, int]
    expires_s: float  # monotonic


class MemoryJobStore(JobStore):
    """Jobs inside the API process, run by its embedded worker threads; lost when the process stops.

    Same behaviour as :class:`RedisJobStore` (states, chunks, progress, paging, TTL), without durability.
    At most :data:`MEMORY_MAX_FINISHED_JOBS` finished jobs are kept.
    """

    backend = "memory"
    durable = False

    def __init__(self, ttl_s: int, max_attempts: int) -> None:
        super().__init__(ttl_s, max_attempts)
        self._jobs: dict[str, _MemoryJob] = {}
        self._queue: queue.Queue[JobTask] = queue.Queue()
        self._lock = threading.Lock()

    def _purge(self) -> None:
        """Drop expired jobs, and the oldest finished ones beyond the cap (call with the lock held)."""
        now_s = time.monotonic()
        for job_id in [j for j, job in self._jobs.items() if job.expires_s <= now_s]:
            del self._jobs[job_id]
        finished = [j for j, job in self._jobs.items() if job.info.finished]
        for job_id in finished[: max(len(finished) - MEMORY_MAX_FINISHED_JOBS, 0)]:
            del self._jobs[job_id]

    def submit(self, model: str, version: str, items: Sequence[Any], chunk_size: int) -> JobInfo:
        chunks = split_chunks(items, chunk_size)
        info = JobInfo.queued(model, version, len(items), chunk_size, len(chunks), durable=False)
        with self._lock:
            self._purge()
            self._jobs[info.job_id] = _MemoryJob(info, dict(enumerate(chunks)), {}, {}, time.monotonic() + self.ttl_s)
        for i in range(len(chunks)):
            self._queue.put(JobTask(job_id=info.job_id, chunk=i))
        return info

    def status(self, job_id: str) -> JobInfo | None:
        with self._lock:
            self._purge()
            job = self._jobs.get(job_id)
            return None if job is None else job.info

    def results(self, job: JobInfo, offset: int, limit: int) -> list[dict[str, Any] | None]:
        stop = min(offset + limit, job.total)
        if offset >= stop:
            return []
        with self._lock:
            stored = self._jobs.get(job.job_id)
            chunks = dict(stored.results) if stored is not None else {}
        return _page(job, offset, stop, chunks)

    def _finish(self, job: _MemoryJob, state: str, error: str | None = None) -> None:
        job.info = replace(job.info, state=state, finished_at=utc_now(), error=error)
        job.inputs.clear()
        job.expires_s = time.monotonic() + self.ttl_s

    def cancel(self, job_id: str) -> JobInfo | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if not job.info.finished:
                self._finish(job, "cancelled")
            return job.info

    def next_task(self, consumer: str, block_s: float) -> JobTask | None:
        try:
            return self._queue.get(timeout=block_s)
        except queue.Empty:
            return None

    def start(self, task: JobTask) -> StartedChunk | None:
        with self._lock:
            job = self._jobs.get(task.job_id)
            if job is None or job.info.finished or task.chunk in job.results or task.chunk not in job.inputs:
                return None
            attempts = job.attempts[task.chunk] = job.attempts.get(task.chunk, 0) + 1
            job.info = replace(job.info, chunk_starts=job.info.chunk_starts + 1)
            if attempts > self.max_attempts:
                self._finish(job, "failed", f"chunk {task.chunk} was started {attempts - 1} times without finishing")
                return None
            if job.info.state == "queued":
                job.info = replace(job.info, state="running", started_at=utc_now())
            return StartedChunk(task=task, model=job.info.model, version=job.info.version,
                                offset=task.chunk * job.info.chunk_size, inputs=job.inputs[task.chunk])  # fmt: skip

    def complete(self, task: JobTask, results: list[dict[str, Any]]) -> str:
        with self._lock:
            job = self._jobs.get(task.job_id)
            if job is None:
                return "missing"
            if job.info.finished or task.chunk in job.results:
                return job.info.state
            job.results[task.chunk] = results
            job.inputs.pop(task.chunk, None)
            info = job.info
            job.info = replace(info, done=info.done + len(results), failed=info.failed + count_failed(results),
                               chunks_done=info.chunks_done + 1)  # fmt: skip
            if job.info.chunks_done >= job.info.chunks_total:
                self._finish(job, "succeeded")
            return job.info.state

    def fail(self, task: JobTask, message: str) -> None:
        with self._lock:
            job = self._jobs.get(task.job_id)
            if job is not None and not job.info.finished:
                self._finish(job, "failed", message)

    def ack(self, task: JobTask) -> None:
        """Nothing to do: a task leaves the in-memory queue when it is taken."""

    def release(self, task: JobTask) -> None:
        """Queue the task again."""
        self._queue.put(task)


def make_job_store(settings: Settings) -> JobStore:
    """Redis store when ``REDIS_URL`` is set, else in memory."""
    if settings.redis_url:
        return RedisJobStore(
            settings.redis_url,
            ttl_s=settings.job_ttl_s,
            max_attempts=settings.job_max_attempts,
            claim_idle_s=settings.job_claim_idle_s,
        )
    return MemoryJobStore(ttl_s=settings.job_ttl_s, max_attempts=settings.job_max_attempts)
