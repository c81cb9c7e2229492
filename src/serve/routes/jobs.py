"""``/jobs/{id}``: the state of an asynchronous job, and :func:`accept_job`, which a route
calls to answer ``202 Accepted`` with ``Location: /jobs/{id}`` instead of waiting.

A key sees only its own jobs (an admin key sees all); anything else is a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from src.core.errors import NotFoundError, StoreUnavailableError
from src.serve.deps import Caller, HistoryCallerDep
from src.serve.routes.openapi import error_responses
from src.serve.routes.predictions import visible_key
from src.serve.schemas import JobResponse
from src.store.jobs import JobFunction, JobRunner, JobView

JobFactory = Callable[[FastAPI], JobFunction]

router = APIRouter(tags=["jobs"])
# Job kinds a route runs asynchronously: kind -> factory(app) -> the job's coroutine function.
# The lifespan registers each on the app's JobRunner (``register_job_kinds``).
JOB_KINDS: dict[str, Callable[[FastAPI], JobFunction]] = {}


def job_kind(kind: str) -> Callable[[JobFactory], JobFactory]:
    """Declare the factory of ``kind``'s job function (``async def run(input_path, params) ->
    dict``), e.g. ``@job_kind("video")`` beside the route that accepts such jobs."""

    def declare(factory: JobFactory) -> JobFactory:
        JOB_KINDS[kind] = factory
        return factory

    return declare


def register_job_kinds(app: FastAPI, runner: JobRunner) -> None:
    for kind, factory in JOB_KINDS.items():
        runner.register(kind, factory(app))


async def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise StoreUnavailableError("asynchronous jobs need the result store (DFD_STORE=on)")
    return jobs


JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def job_response(job: JobView) -> JobResponse:
    return JobResponse(
        job_id=job.id,
        kind=job.kind,
        status=job.status,  # type: ignore[arg-type]
        attempts=job.attempts,
        created_at=job.created_at.replace(tzinfo=UTC),
        updated_at=job.updated_at.replace(tzinfo=UTC),
        result=job.result,
        error=job.error,
    )


def _unavailable(request: Request) -> StoreUnavailableError:
    return StoreUnavailableError(
        "the job store is unreachable", retry_after_s=request.app.state.settings.retry_after_s
    )


@router.get("/jobs/{job_id}", response_model=JobResponse, responses=error_responses(401, 404, 503))
async def read_job(
    request: Request,
    caller: HistoryCallerDep,
    jobs: JobsDep,
    job_id: Annotated[str, Path(min_length=1, max_length=64)],
) -> JobResponse:
    """`queued`, `running`, `done` (with the result) or `failed` (with the reason)."""
    try:
        job = await jobs.get(job_id, visible_key(caller))
    except SQLAlchemyError as exc:
        raise _unavailable(request) from exc
    if job is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    return job_response(job)


async def accept_job(
    request: Request, caller: Caller, kind: str, data: bytes, params: dict[str, Any]
) -> JSONResponse:
    """Keep ``data`` on disk, queue a job of ``kind`` and answer 202 with its ``Location``.
    The kind's function (declared with ``@job_kind``) gets ``params`` plus ``key_id``, the
    caller's, to store its result under; the job's id is its input file's stem."""
    jobs = await get_jobs(request)
    try:
        job = await jobs.submit(kind, data, {**params, "key_id": caller.key_id}, caller.key_id)
    except SQLAlchemyError as exc:
        raise _unavailable(request) from exc
    location = f"/jobs/{job.id}"
    body = job_response(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": location})
