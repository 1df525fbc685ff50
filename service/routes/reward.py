"""OpenRLHF's remote reward protocol: ``POST /get_reward``, so RL trainers use bestofk's
verifiers and sandbox as their reward server (``--remote_rm_url http://HOST/get_reward``).

How a sample's checks are chosen, explicitly, because the protocol only carries a string label:

- ``?profile=NAME`` in the URL applies a server profile's verifiers to every sample: one run,
  one set of checks, configured where OpenRLHF takes a single URL;
- a label that is a JSON verifier spec, or a JSON list of them, adds those (per-sample checks,
  e.g. unit tests, in the dataset's ``--label_key`` column);
- any other non-empty label is the reference answer: ``{"type": "exact", "reference": label}``
  (the common case: math datasets label each prompt with its answer);
- an empty or null label adds nothing; a sample with no verifier at all is a 400.

The response is the query after its prompt (OpenRLHF decodes with special tokens, so a BOS
may come first); ``?stop=</s>`` (repeatable) cuts such markers from the response's end. Samples
sharing prompt and checks become one ``/verify`` job; the jobs run concurrently as one admitted
request. ``rewards`` are the combined scores, ``scores`` whether every verifier passed.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from bestofk.service.engines.base import Prompt
from bestofk.service.errors import InvalidRequestError
from bestofk.service.jobs import JobRequest, new_request_id
from bestofk.service.routes.common import client_gone, runtime
from bestofk.service.schemas.reward import RewardRequest, RewardResponse
from bestofk.verifiers.base import VerifierSpec
from bestofk.verifiers.registry import InvalidVerifierSpecError, parse_spec

router = APIRouter()


def _label_specs(label: str | None, i: int) -> list[VerifierSpec]:
    """The verifiers a label asks for (see the module docstring)."""
    if not label:
        return []
    raw: Any = None
    if label.lstrip()[:1] in ("{", "["):
        try:
            raw = json.loads(label)
        except json.JSONDecodeError:
            raw = None
    if isinstance(raw, dict) and "type" in raw:
        raw = [raw]
    if not (isinstance(raw, list) and raw and all(isinstance(r, dict) for r in raw)):
        raw = [{"type": "exact", "reference": label}]
    try:
        return [parse_spec(r, ("labels", i, j)) for j, r in enumerate(raw)]
    except InvalidVerifierSpecError as exc:
        raise InvalidRequestError(str(exc), param=f"labels.{i}") from None


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
    groups: dict[tuple[str, str], tuple[list[VerifierSpec], list[int], list[str]]] = {}
    for i, (query, prompt, label) in enumerate(zip(body.query, body.prompts, labels, strict=True)):
        key = (prompt, label or "")
        if key not in groups:
            groups[key] = (_label_specs(label, i), [], [])
        groups[key][1].append(i)
        groups[key][2].append(_response(query, prompt, stop or [], i))
    jobs = []
    for (prompt, _), (specs, indices, texts) in groups.items():
        if not specs and profile is None:
            raise InvalidRequestError(
                f"sample {indices[0]} has no verifier: give a label (a reference answer or a "
                "JSON verifier spec) or a server profile (?profile=NAME)",
                param=f"labels.{indices[0]}",
            )
        request_job = JobRequest(
            prompt=Prompt(text=prompt), verifiers=specs, profile=profile, given=texts,
            arrived=arrived,
        )  # fmt: skip
        jobs.append(rt.jobs.build(new_request_id("rwd"), request_job))
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
