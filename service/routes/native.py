"""The native API: ``/generate``, ``/verify``, ``/health``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bestofk.service.engines.base import EngineHealth, Prompt
from bestofk.service.errors import retry_after
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.routes.common import client_gone, post_json, render_json, runtime, trace_link
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.native import (
    GenerateRequest,
    VerifyRequest,
    adaptive_fields,
    confidence_field,
)
from bestofk.service.schemas.output import RerankResponse

router = APIRouter()


def _prompt(body: GenerateRequest | VerifyRequest) -> Prompt | None:
    if body.messages is not None:
        return Prompt(messages=[m.model_dump(exclude_none=True) for m in body.messages])
    return Prompt(text=body.prompt) if body.prompt is not None else None


def _job_request(
    body: GenerateRequest | VerifyRequest, arrived: float, **fields: Any
) -> JobRequest:
    """The fields both native endpoints share, and ``fields``, as the API-neutral request."""
    return JobRequest(
        prompt=_prompt(body),
        model=body.model,
        verifiers=body.verifiers or (),
        profile=body.profile,
        selection=body.selection.fields() if body.selection else None,
        timeout_s=body.timeout_s,
        arrived=arrived,
        **fields,
    )


@post_json(router, "/generate", response_model=RerankResponse)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Sample K candidates, verify each, return the best with every score behind it."""
    fields = _job_request(
        body,
        time.perf_counter(),
        k=body.k,
        sampling=body.sampling.sampling_fields(),
        early_exit_min_score=body.early_exit.min_score if body.early_exit else None,
        **adaptive_fields(body.adaptive, body.budget),
        confidence=confidence_field(body.confidence),
    )
    rt = runtime(request)
    job = rt.jobs.build(new_request_id("gen"), fields)
    result = await rt.execute(job, client_gone(request))
    return render_json(result, body.return_candidates, trace_link(rt, job.request_id))


@post_json(router, "/verify", response_model=RerankResponse)
async def verify(body: VerifyRequest, request: Request) -> Response:
    """Score and rank given completions; the engine is not touched."""
    fields = _job_request(body, time.perf_counter(), given=body.candidates)
    rt = runtime(request)
    job = rt.jobs.build(new_request_id("ver"), fields)
    result = await rt.execute(job, client_gone(request))
    return render_json(result, body.return_candidates, trace_link(rt, job.request_id))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 ``{"status": "ready"}`` while the engine takes requests; else 503 with the status
    (``loading``, ``no_healthy_backend``, ``engine_dead``…), a ``detail`` and Retry-After.
    While request records cannot be written the status stays, and the detail says so."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    if rt is not None and rt.draining:
        body = {"status": "draining", "detail": "the server is shutting down"}
        return JSONResponse(body, status_code=503, headers=retry_after(1))
    state = rt.engine.health if rt is not None else EngineHealth("loading", 1.0, "starting")
    # Failing records do not stop serving, so they change the detail, not the status.
    recording = rt.recorder.failing if rt is not None and rt.recorder is not None else None
    detail = "; ".join(part for part in (state.detail, recording) if part)
    body = {"status": state.status, "detail": detail}
    if state.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers=retry_after(state.retry_after_s))


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition: bestofk_* and the in-process engine's vllm:* metrics."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, object]:
    """The served model, plus one ``NAME@PROFILE`` entry per configured profile, each with
    the K and the selection a request without ``best_of`` and ``selection`` gets."""
    rt = runtime(request)
    name = rt.engine.model_name
    entries = [(name, None), *((f"{name}@{p}", p) for p in sorted(rt.settings.profiles))]
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": 0,
                "owned_by": "bestofk",
                "default_k": rt.jobs.default_k(profile),
                "default_selection": rt.jobs.default_selection(profile),
            }
            for model_id, profile in entries
        ],
    }
