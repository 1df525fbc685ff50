"""OpenRLHF's remote reward protocol: ``POST /get_reward``, so RL trainers use bestofk's
verifiers and sandbox as their reward server (``--remote_rm_url http://HOST/get_reward``).

Which checks a sample gets: ``?profile=NAME`` in the URL applies a server profile's verifiers
to every sample (one run, one set of checks, configured where OpenRLHF takes a single URL), and
each sample's label adds its own (:mod:`bestofk.service.labels`: a JSON verifier spec or a
list of them, else the reference answer); a sample with no verifier at all is a 400.

The response is the query after its prompt (OpenRLHF decodes with special tokens, so a BOS
may come first); ``?stop=</s>`` (repeatable) cuts such markers from the response's end. Samples
sharing prompt and checks become one ``/verify`` job; the jobs run concurrently as one admitted
request. ``rewards`` are the combined scores, ``scores`` whether every verifier passed.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from bestofk.service.engines.base import Prompt
from bestofk.service.errors import InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.labels import Label
from bestofk.service.routes.common import client_gone, runtime
from bestofk.service.schemas.reward import RewardRequest, RewardResponse

router = APIRouter()


def _response(query: str, prompt: str, stop: list[str], i: int) -> str:
    start = query.find(prompt)
    if start < 0:
        raise InvalidRequestError(
            f"query {i} does not contain its prompt: the response is what follows the prompt",
            param=f"query.{i}",
        )
    text = query[start + len(prompt) :]
    cut = True
    while cut:
        cut = False
        for marker in stop:
            if marker and text.endswith(marker):
                text, cut = text[: -len(marker)], True
    return text


@router.post("/get_reward", response_model=RewardResponse)
async def get_reward(
    body: RewardRequest,
    request: Request,
    profile: Annotated[str | None, Query(description="A server profile for every sample.")] = None,
    stop: Annotated[list[str] | None, Query(description="Cut from each response's end.")] = None,
) -> RewardResponse:
    """One reward per sample from the verify pipeline."""
    arrived = time.perf_counter()
    rt = runtime(request)
    labels = body.labels or [None] * len(body.query)
    groups: dict[tuple[str, str], tuple[Label, list[int], list[str]]] = {}
    for i, (query, prompt, label) in enumerate(zip(body.query, body.prompts, labels, strict=True)):
        key = (prompt, label or "")
        if key not in groups:
            groups[key] = (Label(label, i), [], [])
        groups[key][1].append(i)
        groups[key][2].append(_response(query, prompt, stop or [], i))
    jobs = [
        rt.jobs.build(
            new_request_id("rwd"),
            JobRequest(
                Prompt(text=prompt), label=label, profile=profile, given=texts, arrived=arrived
            ),
        )
        for (prompt, _), (label, _, texts) in groups.items()
    ]
    results = await rt.execute_batch(jobs, client_gone(request))
    rewards = [0.0] * len(body.query)
    scores = [0.0] * len(body.query)
    errors = [0.0] * len(body.query)
    for (_, indices, _), result in zip(groups.values(), results, strict=True):
        for scored in result.candidates:
            i = indices[scored.candidate.index]
            rewards[i] = scored.score
            scores[i] = float(scored.passed)
            errors[i] = float(any(v.error for v in scored.verdicts))
    return RewardResponse(rewards=rewards, scores=scores, extra_logs={"verifier_error": errors})
