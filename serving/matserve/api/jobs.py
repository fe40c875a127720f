"""Batch jobs: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/results``, ``DELETE /v1/jobs/{id}``.

Jobs are run in chunks by worker threads of this process and/or ``matserve worker`` processes
(:mod:`matserve.jobs`, :mod:`matserve.worker`). Sections: request schema, routes; the answers' wire schemas are
:class:`matserve_client.wire.JobResponse` and :class:`matserve_client.wire.JobResultsResponse`.

No ``from __future__ import annotations`` here: the page limit's annotation uses the settings of the app being
built, which FastAPI must see as an object, not a string it would resolve in the module's globals.
"""

import functools
import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matserve.api.common import ERROR_RESPONSES, item_errors, parse_body
from matserve.api.context import Context, ServingContext
from matserve.errors import Unavailable
from matserve.jobs import JobInfo, JobNotFound
from matserve.metrics import JOBS
from matserve.openapi import job_request_body
from matserve.settings import Settings
from matserve.worker import MODEL_CLASSES
from matserve_client.wire import JobResponse, JobResultsResponse

PATH = "/jobs"
logger = logging.getLogger("matserve.service")

# -- request schema ----------------------------------------------------------------------------------------------


@functools.cache
def request_schema(max_job_items: int) -> type[BaseModel]:
    """The request body, with the server's limit of inputs per job (``MATSERVE_MAX_JOB_ITEMS``)."""

    class JobRequest(BaseModel):
        """A batch job: many inputs for one model, run in chunks by workers."""

        model_config = ConfigDict(extra="forbid")

        model: str = Field(examples=["formation_enthalpy"])
        inputs: list[Any] = Field(min_length=1, max_length=max_job_items, examples=[["NaCl", "Fe2O3"]])
        version: str | None = Field(default=None, examples=[None])

    return JobRequest


def job_response(job: JobInfo) -> JobResponse:
    """The API view of a job, with the URLs to poll it and read its results."""
    status_url = f"/v1/jobs/{job.job_id}"
    return JobResponse(**job.to_dict(), status_url=status_url, results_url=f"{status_url}/results")


def find_job(context: ServingContext, job_id: str) -> JobInfo:
    """The job ``job_id``, or 404 saying why it may be gone."""
    job = context.jobs.status(job_id)
    if job is None:
        raise JobNotFound(
            f"unknown job {job_id!r}: never submitted, or expired (jobs are kept {context.settings.job_ttl_s} s "
            "after they finish)" + ("" if context.jobs.durable else ", or lost in a server restart (no Redis)")
        )
    return job


def submit(context: ServingContext, model_name: str, inputs: list[Any], version: str | None) -> JobResponse:
    """Validate a job's inputs against its model's item type and queue it (the version is pinned now)."""
    model = context.model(model_name)
    pinned = model.version(version).version
    try:
        items = context.item_adapters[model.name].validate_python(inputs)
    except ValidationError as error:
        raise item_errors(error, "inputs") from None
    if not context.jobs.durable and not context.workers.threads:
        raise Unavailable("jobs are not run by this server: without REDIS_URL they need MATSERVE_EMBEDDED_WORKERS >= 1")
    job = context.jobs.submit(model.name, pinned, items, context.settings.job_chunk_size)
    JOBS.labels(model=model.name, event="submitted").inc()
    logger.info("job %s: %d %s inputs in %d chunk(s)", job.job_id, job.total, model.name, job.chunks_total)
    return job_response(job)


# -- routes ------------------------------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """The job routes, with the limits of ``settings``."""
    routes = APIRouter()
    schema = request_schema(settings.max_job_items)

    @routes.post(
        PATH,
        status_code=202,
        response_model=JobResponse,
        responses=ERROR_RESPONSES,
        summary="Submit a batch job (up to 10⁶ inputs); poll status_url, then read results_url",
        openapi_extra=job_request_body(MODEL_CLASSES, settings.max_job_items),
    )
    async def submit_job(http_request: Request, context: Context) -> JobResponse:
        """Queue a job; the model version is pinned now (the active one unless ``version`` is given)."""
        request: Any = await parse_body(http_request, schema)
        return await anyio.to_thread.run_sync(submit, context, request.model, request.inputs, request.version)

    @routes.get(PATH + "/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="A job's state")
    def job_status(job_id: str, context: Context) -> JobResponse:
        """State, progress (items done and failed), pinned version and timestamps of a job."""
        return job_response(find_job(context, job_id))

    @routes.get(
        PATH + "/{job_id}/results",
        response_model=JobResultsResponse,
        responses=ERROR_RESPONSES,
        summary="A page of a job's results, in input order",
    )
    def job_results(
        job_id: str,
        context: Context,
        offset: Annotated[int, Query(ge=0, description="first item (0-based)")] = 0,
        limit: Annotated[int, Query(ge=1, le=settings.max_formulas, description="most items in the page")] = 1000,
    ) -> JobResultsResponse:
        """Results of items ``offset`` to ``offset + limit``; ``null`` for items whose chunk has not run."""
        job = find_job(context, job_id)
        results = context.jobs.results(job, offset, limit)
        end = offset + len(results)
        return JobResultsResponse(
            job_id=job.job_id, model=job.model, version=job.version, state=job.state, total=job.total,
            offset=offset, limit=limit, next_offset=end if end < job.total else None, results=results,
        )  # fmt: skip

    @routes.delete(PATH + "/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="Cancel")
    def cancel_job(job_id: str, context: Context) -> JobResponse:
        """Cancel a queued or running job: chunks not yet started are skipped. A finished job is left as it is."""
        find_job(context, job_id)
        job = context.jobs.cancel(job_id)
        if job is None:  # expired in between
            return job_response(find_job(context, job_id))
        if job.state == "cancelled":
            JOBS.labels(model=job.model, event="cancelled").inc()
        return job_response(job)

    return routes
