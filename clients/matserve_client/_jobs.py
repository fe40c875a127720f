"""Batch jobs (``/v1/jobs``): flows, helpers and the public methods of both clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from . import wire
from ._base import (
    AsyncDriver,
    BaseClient,
    Flow,
    SyncDriver,
    _sleep,
    logger,
    open_progress_bar,
    parse_body,
    same_doc,
)
from .models import FormationEnthalpyResult, Job, JobResultsPage

DEFAULT_JOB_PAGE_SIZE = 1000
"""Results per page when reading a job's results."""
DEFAULT_JOB_POLL_S = 1.0
"""Default interval between job status polls, in seconds."""


def as_input_list(inputs: Sequence[Any] | str) -> list[Any]:
    """Copy job ``inputs`` into a non-empty list, treating a single string as one input."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ValueError("a job needs at least one input")
    return items


def job_path(job_id: str, suffix: str = "") -> str:
    """``/v1/jobs/<job_id><suffix>`` with the id escaped."""
    if not job_id:
        raise ValueError("job_id is empty")
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def _optional_progress_bar(job: Job) -> Any:
    """A progress bar over a job's items if tqdm is installed, else ``None``."""
    try:
        return open_progress_bar(job.total, unit="item", desc=f"job {job.job_id[:8]} {job.model}")
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None


def typed_page(page: wire.JobResultsResponse) -> JobResultsPage:
    """A page of job results with each item typed for its model, and ``model``/``version`` copied into it."""
    items: list[FormationEnthalpyResult | dict[str, Any] | None] = []
    for item in page.results:
        if item is None:
            items.append(None)
        elif page.model == "formation_enthalpy":
            fields = wire.FormationEnthalpyResult.model_validate(item).model_dump()
            items.append(FormationEnthalpyResult(**fields, model=page.model, version=page.version))
        else:
            items.append({**item, "model": page.model, "version": page.version})
    return JobResultsPage(**page.model_dump(exclude={"results"}), results=items)


class _JobFlows(BaseClient):
    """The job flows (no I/O)."""

    def _submit_job_flow(self, model: str, inputs: Sequence[Any] | str, version: str | None) -> Flow[Job]:
        body = {"model": model, "inputs": as_input_list(inputs), "version": version}
        # Not retried: a retry after a lost response could submit the job twice.
        response = yield from self._request("POST", "/v1/jobs", body=body, retry=False)
        return parse_body(response, Job)

    def _job_flow(self, job_id: str) -> Flow[Job]:
        response = yield from self._request("GET", job_path(job_id))
        return parse_body(response, Job)

    def _cancel_job_flow(self, job_id: str) -> Flow[Job]:
        response = yield from self._request("DELETE", job_path(job_id))  # idempotent: safe to retry
        return parse_body(response, Job)

    def _job_results_page_flow(self, job_id: str, offset: int, limit: int) -> Flow[JobResultsPage]:
        if offset < 0 or limit < 1:
            raise ValueError(f"need offset >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        response = yield from self._request("GET", job_path(job_id, f"/results?offset={offset}&limit={limit}"))
        return typed_page(parse_body(response, wire.JobResultsResponse))

    def _wait_job_flow(self, job_id: str, timeout_s: float | None, poll_s: float, progress: bool) -> Flow[Job]:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {poll_s}")
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        bar = None
        try:
            while True:
                job = yield from self._job_flow(job_id)
                if progress and bar is None:
                    bar = _optional_progress_bar(job)
                if bar is not None:
                    bar.update(job.done - bar.n)
                if job.finished:
                    return job
                if deadline_s is not None:
                    remaining_s = deadline_s - time.monotonic()
                    if remaining_s <= 0:
                        raise TimeoutError(
                            f"job {job_id} is still {job.state} after {timeout_s} s ({job.done}/{job.total} done)"
                        )
                    yield from _sleep(min(poll_s, remaining_s))
                else:
                    yield from _sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()


class JobMethods(_JobFlows, SyncDriver):
    """The job methods of :class:`~matserve_client.Client`."""

    def submit_job(self, model: str, inputs: Sequence[Any] | str, *, version: str | None = None) -> Job:
        """Submit a batch job: many inputs for one model, run in the background by the server's workers.

        Parameters
        ----------
        model : str
            Model name, e.g. ``"formation_enthalpy"``.
        inputs : sequence, or str
            The inputs (formulas for formation enthalpy), up to the server's job limit (10⁶ by default); a
            single string is one input.
        version : str, optional
            Model version to pin; default: the server's active version at submission time.

        Returns
        -------
        Job
            The queued job (``state == "queued"``); poll it with :meth:`job` or :meth:`wait_job`.

        Raises
        ------
        InvalidInputError
            Bad inputs (400/422): empty list, wrong item type, ...
        NotFoundError
            Unknown model or version (404).
        PayloadTooLargeError
            Too many inputs or too large a body (413).
        ServiceUnavailableError
            The server cannot take jobs now (503: job store unreachable, or no worker without Redis).
        MatserveConnectionError
            No response. Submission is never retried (a retry could submit the job twice).
        """
        return self._run(self._submit_job_flow(model, inputs, version))

    def job(self, job_id: str) -> Job:
        """The current state and progress of a job (``GET /v1/jobs/{id}``).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        """
        return self._run(self._job_flow(job_id))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a job: chunks not started yet are skipped (``DELETE /v1/jobs/{id}``); a finished job is unchanged.

        Returns
        -------
        Job
            The job after the request (``state == "cancelled"`` unless it had already finished).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        """
        return self._run(self._cancel_job_flow(job_id))

    def wait_job(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool = True,
        poll_s: float = DEFAULT_JOB_POLL_S,
    ) -> Job:
        """Poll a job until it succeeds, fails or is cancelled.

        Parameters
        ----------
        job_id : str
        timeout_s : float, optional
            Give up after this many seconds (:class:`TimeoutError`); default: wait as long as it takes.
        progress : bool, default True
            Show a tqdm progress bar over the job's items when tqdm is installed (silently none otherwise).
        poll_s : float, default 1.0
            Seconds between polls.

        Returns
        -------
        Job
            The finished job; check ``state`` (a failed job is returned, not raised).

        Raises
        ------
        TimeoutError
            Still not finished after ``timeout_s`` seconds (the job goes on).
        NotFoundError
            Unknown or expired job (404).
        """
        return self._run(self._wait_job_flow(job_id, timeout_s, poll_s, progress))

    def job_results_page(self, job_id: str, *, offset: int = 0, limit: int = DEFAULT_JOB_PAGE_SIZE) -> JobResultsPage:
        """One page of a job's results: items ``offset`` to ``offset + limit`` in input order.

        Items not predicted (yet) are ``None``; see :class:`JobResultsPage`. ``limit`` is at most the server's
        ``max_batch_size`` (10,000 by default).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        InvalidInputError
            ``limit`` above the server's maximum (422).
        """
        return self._run(self._job_results_page_flow(job_id, offset, limit))

    def job_results(
        self, job_id: str, *, page_size: int = DEFAULT_JOB_PAGE_SIZE
    ) -> Iterator[FormationEnthalpyResult | dict[str, Any] | None]:
        """Every result of a job, in input order, fetched page by page as the iteration goes.

        Call it once the job has finished (see :meth:`wait_job`): items not predicted are ``None``.
        Formation enthalpy items are :class:`FormationEnthalpyResult` (with ``model`` and ``version``, and a
        per-item ``error`` for inputs that could not be predicted); items of other models are dicts.

        Examples
        --------
        >>> job = client.submit_job("formation_enthalpy", formulas)  # doctest: +SKIP
        >>> client.wait_job(job.job_id)  # doctest: +SKIP
        >>> results = list(client.job_results(job.job_id))  # doctest: +SKIP
        """
        offset: int | None = 0
        while offset is not None:
            page = self._run(self._job_results_page_flow(job_id, offset, page_size))
            yield from page.results
            offset = page.next_offset


class AsyncJobMethods(_JobFlows, AsyncDriver):
    """The job methods of :class:`~matserve_client.AsyncClient` (coroutines)."""

    @same_doc(JobMethods.submit_job)
    async def submit_job(self, model: str, inputs: Sequence[Any] | str, *, version: str | None = None) -> Job:
        return await self._run(self._submit_job_flow(model, inputs, version))

    @same_doc(JobMethods.job)
    async def job(self, job_id: str) -> Job:
        return await self._run(self._job_flow(job_id))

    @same_doc(JobMethods.cancel_job)
    async def cancel_job(self, job_id: str) -> Job:
        return await self._run(self._cancel_job_flow(job_id))

    @same_doc(JobMethods.wait_job)
    async def wait_job(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool = True,
        poll_s: float = DEFAULT_JOB_POLL_S,
    ) -> Job:
        return await self._run(self._wait_job_flow(job_id, timeout_s, poll_s, progress))

    @same_doc(JobMethods.job_results_page)
    async def job_results_page(
        self, job_id: str, *, offset: int = 0, limit: int = DEFAULT_JOB_PAGE_SIZE
    ) -> JobResultsPage:
        return await self._run(self._job_results_page_flow(job_id, offset, limit))

    async def job_results(
        self, job_id: str, *, page_size: int = DEFAULT_JOB_PAGE_SIZE
    ) -> AsyncIterator[FormationEnthalpyResult | dict[str, Any] | None]:
        """Every result of a job, in input order, fetched page by page as the iteration goes.

        Call it once the job has finished (see :meth:`wait_job`): items not predicted are ``None``.
        Formation enthalpy items are :class:`FormationEnthalpyResult` (with ``model`` and ``version``, and a
        per-item ``error`` for inputs that could not be predicted); items of other models are dicts.

        Examples
        --------
        >>> job = await client.submit_job("formation_enthalpy", formulas)  # doctest: +SKIP
        >>> await client.wait_job(job.job_id)  # doctest: +SKIP
        >>> results = [r async for r in client.job_results(job.job_id)]  # doctest: +SKIP
        """
        offset: int | None = 0
        while offset is not None:
            page = await self._run(self._job_results_page_flow(job_id, offset, page_size))
            for item in page.results:
                yield item
            offset = page.next_offset
