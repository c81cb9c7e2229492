"""``POST /infer/batch``: many images in one request, one result (or one error) per file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from src.core.errors import InputError
from src.core.labels import Label, decide
from src.serve.deps import CallerDep, ServiceDep, SettingsDep, UploadGateDep
from src.serve.ratelimit import charge
from src.serve.routes.inference import image_cache_value
from src.serve.routes.openapi import BATCH_UPLOAD_BODY, error_responses
from src.serve.routes.predictions import CacheLookup, look_up, remember, store_result
from src.serve.schemas import BatchItemFailure, BatchItemResult, BatchResponse, ItemError
from src.serve.uploads import UploadedFile, while_connected

router = APIRouter(tags=["inference"])


@dataclass(frozen=True)
class _Scored:
    fake_prob: float
    label: Label


@router.post(
    "/infer/batch",
    response_model=BatchResponse,
    responses=error_responses(400, 401, 403, 408, 413, 429, 503, 504),
    openapi_extra=BATCH_UPLOAD_BODY,
)
async def infer_batch(
    request: Request,
    response: Response,
    caller: CallerDep,
    service: ServiceDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
) -> BatchResponse:
    """Score several frames in one request.

    Send 1 to `DFD_MAX_BATCH_ITEMS` images, each in a multipart field named `files`. One bad file
    never fails the others: its entry carries an `error` instead of a score. Files already
    answered for this model come from the result cache (shared with `/infer`); `X-Cache` is
    `hit` only when every file did. Each file's answer is kept in the history as
    `{request_id}-{index}`.
    """
    arrived_at: float = request.state.arrived_at
    deadline = arrived_at + settings.request_timeout_s
    async with uploads.hold() as upload:
        files = await uploads.receive_files(
            upload,
            request,
            max_items=settings.max_batch_items,
            max_item_bytes=settings.max_upload_bytes,
            max_total_bytes=settings.max_batch_bytes,
            request_deadline=deadline,
        )
    # A batch costs its files; their number is known once the body is read.
    await charge(request, len(files))
    lookups = await asyncio.gather(
        *(look_up(request, file.data) for file in files if file.error is None)
    )
    by_index = dict(zip((i for i, f in enumerate(files) if f.error is None), lookups, strict=True))
    outcomes = await _score_misses(request, service, files, by_index, arrived_at, deadline)
    response.headers["X-Cache"] = (
        "hit" if lookups and all(lookup.value is not None for lookup in lookups) else "miss"
    )
    results: list[BatchItemResult | BatchItemFailure] = []
    for index, file in enumerate(files):
        outcome = outcomes.get(index, file.error)
        if not isinstance(outcome, _Scored):
            assert outcome is not None
            error = ItemError(code=outcome.code, message=str(outcome))
            results.append(BatchItemFailure(index=index, filename=file.filename, error=error))
            continue
        results.append(
            BatchItemResult(
                index=index,
                filename=file.filename,
                fake_prob=outcome.fake_prob,
                real_prob=round(1.0 - outcome.fake_prob, 6),
                label=outcome.label,
            )
        )
        _keep(request, service, file, by_index[index], outcome, index)
    return BatchResponse(
        request_id=request.state.request_id,
        model_version=service.version,
        threshold=service.threshold,
        results=results,
    )


async def _score_misses(
    request: Request,
    service: ServiceDep,
    files: list[UploadedFile],
    lookups: dict[int, CacheLookup],
    arrived_at: float,
    deadline: float,
) -> dict[int, _Scored | InputError]:
    """Each readable file's score: from the cache, or computed (one queue place per file)."""
    outcomes: dict[int, _Scored | InputError] = {
        index: _Scored(
            float(lookup.value["fake_prob"]), decide(lookup.value["fake_prob"], service.threshold)
        )
        for index, lookup in lookups.items()
        if lookup.value is not None
    }
    misses = [index for index, lookup in lookups.items() if lookup.value is None]
    if not misses:
        return outcomes
    with service.admit(len(misses), arrived_at=arrived_at):
        scored = await while_connected(
            request,
            lambda gone: service.predict_each(
                [files[index].data for index in misses], deadline=deadline, disconnected=gone
            ),
        )
    metadata = service.metadata
    for index, outcome in zip(misses, scored, strict=True):
        if isinstance(outcome, InputError):
            outcomes[index] = outcome
            continue
        fake_prob = round(outcome.fake_prob, 6)
        outcomes[index] = _Scored(fake_prob, outcome.label)
        remember(
            request,
            lookups[index],
            image_cache_value(fake_prob, service.version, metadata.architecture),
        )
    return outcomes


def _keep(
    request: Request,
    service: ServiceDep,
    file: UploadedFile,
    lookup: CacheLookup,
    scored: _Scored,
    index: int,
) -> None:
    """Count the item and queue it for the history, under ``{request_id}-{index}``."""
    request.app.state.metrics.prediction_made(scored.label, scored.fake_prob, service.version)
    request_id: str = request.state.request_id
    store_result(
        request,
        lookup,
        file.data,
        kind="batch-item",
        fake_prob=scored.fake_prob,
        label=scored.label,
        threshold=service.threshold,
        model_name=service.metadata.architecture,
        model_version=service.version,
        timings={},
        request_id=f"{request_id}-{index}",
        parent_request_id=request_id,
    )
