"""The native API: ``/generate``, ``/verify``, ``/health``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bestofk.service import metrics
from bestofk.service.engines.base import EngineHealth, Prompt
from bestofk.service.errors import retry_after
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.pipeline import RerankResult
from bestofk.service.runtime import Runtime
from bestofk.service.schemas.native import (
    CandidateOut,
    GenerateRequest,
    RerankResponse,
    Stats,
    TimingOut,
    Usage,
    VerdictOut,
    VerifyRequest,
)
from bestofk.service.selection import Scored

router = APIRouter()


def runtime(request: Request) -> Runtime:
    """The app's runtime (set in the lifespan)."""
    rt: Runtime = request.app.state.runtime
    return rt


def _prompt(body: GenerateRequest | VerifyRequest) -> Prompt | None:
    if body.messages is not None:
        return Prompt(messages=[m.model_dump(exclude_none=True) for m in body.messages])
    return Prompt(text=body.prompt) if body.prompt is not None else None


def candidate_out(s: Scored) -> CandidateOut:
    """A scored candidate as the API shows it."""
    c = s.candidate
    return CandidateOut(
        index=c.index,
        text=c.text,
        score=s.score,
        passed=s.passed,
        finish_reason=c.finish_reason,
        tokens=c.tokens,
        mean_logprob=c.mean_logprob,
        verdicts=[
            VerdictOut(
                verifier=v.verifier,
                score=v.score,
                passed=v.passed,
                detail=v.detail,
                latency_ms=v.latency_ms,
                error=v.error,
            )
            for v in s.verdicts
        ],
    )


def render(result: RerankResult, return_candidates: bool) -> RerankResponse:
    """The native response for a result (also embedded in OpenAI responses as ``bestofk``)."""
    chosen = result.chosen
    t = result.timing
    return RerankResponse(
        id=result.request_id,
        model=result.model,
        text=chosen.candidate.text,
        index=chosen.candidate.index,
        score=chosen.score,
        passed=chosen.passed,
        candidates=[candidate_out(s) for s in result.candidates] if return_candidates else None,
        stats=Stats(
            k=result.k,
            k_requested=result.k_requested or result.k,
            generated=result.generated,
            passing=result.passing,
            first_sample_passed=result.first_sample_passed,
            early_exit=result.early_exit,
            partial=result.partial,
        ),
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            verifier_tokens=result.verifier_tokens,
        ),
        timing=TimingOut(
            queue_ms=t.queue_ms,
            first_candidate_ms=t.first_candidate_ms,
            generate_ms=t.generate_ms,
            verify_ms=t.verify_ms,
            total_ms=t.total_ms,
        ),
    )


@router.post("/generate", response_model=RerankResponse)
async def generate(body: GenerateRequest, request: Request) -> RerankResponse:
    """Sample K candidates, verify each, return the best with every score behind it."""
    arrived = time.perf_counter()
    rt = runtime(request)
    job = rt.jobs.build(
        new_request_id("gen"),
        JobRequest(
            prompt=_prompt(body),
            model=body.model,
            k=body.k,
            sampling=body.sampling.model_dump(),
            verifiers=body.verifiers or (),
            profile=body.profile,
            selection=body.selection.model_dump(exclude_unset=True) if body.selection else None,
            early_exit_min_score=body.early_exit.min_score if body.early_exit else None,
            timeout_s=body.timeout_s,
            arrived=arrived,
        ),
    )
    return render(await rt.execute(job, request), body.return_candidates)


@router.post("/verify", response_model=RerankResponse)
async def verify(body: VerifyRequest, request: Request) -> RerankResponse:
    """Score and rank given completions; the engine is not touched."""
    arrived = time.perf_counter()
    rt = runtime(request)
    job = rt.jobs.build(
        new_request_id("ver"),
        JobRequest(
            prompt=_prompt(body),
            model=body.model,
            verifiers=body.verifiers or (),
            profile=body.profile,
            selection=body.selection.model_dump(exclude_unset=True) if body.selection else None,
            given=body.candidates,
            timeout_s=body.timeout_s,
            arrived=arrived,
        ),
    )
    return render(await rt.execute(job, request), body.return_candidates)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 ``{"status": "ready"}`` while the engine takes requests; else 503 with the status
    (``loading``, ``no_healthy_backend``, ``engine_dead``…), a ``detail`` and Retry-After."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    if rt is not None and rt.draining:
        body = {"status": "draining", "detail": "the server is shutting down"}
        return JSONResponse(body, status_code=503, headers=retry_after(1))
    state = rt.engine.health if rt is not None else EngineHealth("loading", 1.0, "starting")
    body = {"status": state.status, "detail": state.detail}
    if state.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers=retry_after(state.retry_after_s))


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    """Prometheus exposition: bestofk_* and the in-process engine's vllm:* metrics."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, object]:
    """The served model, plus one ``NAME@PROFILE`` entry per configured profile, each with
    the K a request without ``best_of`` gets (``default_k``)."""
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
            }
            for model_id, profile in entries
        ],
    }
