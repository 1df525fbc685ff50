"""`judge`: an LLM as judge, scored from its token logprobs.

Pointwise (the default) asks about one candidate at a time; the score is the judge's
probability of the positive label (or its expected 1-10 rating). It is a pointwise verifier, so
a candidate is judged as soon as it finishes (overlapping the others' generation, and able to
trigger early exit), while the judge prompts of candidates that are ready together go out as
one batch (:mod:`bestofk.verifiers.batching`): all K of a ``/verify`` request are one batch.

Listwise shows all K at once, in an order shuffled with a seed, and asks for the best; the
choice distribution is mapped back to the candidates (score = probability relative to the
judge's favourite, which alone passes). It is a set-level verifier, since it needs all K.

The judge model is the serving engine (``resources.completer``), or the OpenAI-compatible
server at ``endpoint`` (``model`` names its model; default the first it lists). The judge's
generated tokens count in ``usage.verifier_tokens``. A timeout, an engine error or an
unreadable answer is an error verdict with the reason, never a failed request.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from bestofk.verifiers import judge_scoring
from bestofk.verifiers.base import (
    Candidate,
    Completer,
    Completion,
    RequestContext,
    TargetNotAllowedError,
    Verdict,
    VerifierResources,
    VerifierSpec,
)
from bestofk.verifiers.batching import Coalescer
from bestofk.verifiers.endpoint import EndpointCompleter, check_allowed
from bestofk.verifiers.templates import check_template, fields

POINTWISE_TEMPLATE = "Question: {prompt}\nAnswer: {candidate}\nIs the answer correct? (yes/no):"
"""The demo model is trained on exactly this; its positive label is " yes"."""
SCALE_TEMPLATE = (
    "Question: {prompt}\nAnswer: {candidate}\n"
    "Rate the answer from 1 (wrong) to 10 (perfect). Rating:"
)
LISTWISE_TEMPLATE = (
    "Question: {prompt}\n{candidates}\nWhich answer is best? Reply with its number. Best:"
)
_FIELDS = {
    "pointwise": {"prompt", "candidate", "rubric", "reference"},
    "listwise": {"prompt", "candidates", "rubric", "reference"},
}
MAX_TEXT_CHARS = 8000


class JudgeSpec(VerifierSpec):
    """How to ask the judge, and which model to ask."""

    type: Literal["judge"] = "judge"
    mode: Literal["pointwise", "listwise"] = "pointwise"
    rubric: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    """What "correct" means; put before the template unless it has a ``{rubric}`` field."""
    reference: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    """A reference answer; put before the template unless it has a ``{reference}`` field."""
    template: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    """Fields: ``{prompt}``, ``{candidate}`` (pointwise) or ``{candidates}`` (listwise),
    ``{rubric}``, ``{reference}``. Default: the demo model's template (or the 1-10 one)."""
    scale: Literal["binary", "1-10"] = "binary"
    positive: str = Field(default=" yes", min_length=1, max_length=32)
    negative: str = Field(default=" no", min_length=1, max_length=32)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """A pointwise candidate passes at this score or above."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    model: str | None = Field(default=None, max_length=500)
    max_tokens: int = Field(default=8, ge=1, le=64)
    """Only the first token's logprobs score; the rest is for reading the text as a fallback."""
    top_logprobs: int = Field(default=20, ge=1, le=20)
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    seed: int = 0
    """Listwise shuffle seed (mixed with the prompt, so each question gets its own order)."""

    @model_validator(mode="after")
    def _consistent(self) -> JudgeSpec:
        if self.model is not None and self.endpoint is None:
            raise ValueError(
                "'model' names the endpoint's model; without 'endpoint' the judge "
                "is the serving engine"
            )
        if self.template is not None:
            check_template(self.template, _FIELDS[self.mode])
        return self


def _render(spec: JudgeSpec, template: str, **values: str) -> str:
    text = template.format_map(
        {"rubric": spec.rubric or "", "reference": spec.reference or "", **values}
    )
    # Rubric and reference the template does not place go first, as context.
    placed = fields(template)
    context = ""
    if spec.rubric and "rubric" not in placed:
        context += f"{spec.rubric}\n"
    if spec.reference and "reference" not in placed:
        context += f"Reference answer: {spec.reference}\n"
    return context + text


def render_pointwise(spec: JudgeSpec, prompt: str, candidate: str) -> str:
    """The judge prompt for one candidate."""
    default = SCALE_TEMPLATE if spec.scale == "1-10" else POINTWISE_TEMPLATE
    return _render(spec, spec.template or default, prompt=prompt, candidate=candidate.strip())


def render_listwise(spec: JudgeSpec, prompt: str, shown: Sequence[str]) -> str:
    """The judge prompt showing ``shown`` as answers 1..K."""
    listing = "\n".join(f"Answer {i + 1}: {text.strip()}" for i, text in enumerate(shown))
    return _render(spec, spec.template or LISTWISE_TEMPLATE, prompt=prompt, candidates=listing)


def judge_model(spec: JudgeSpec, resources: VerifierResources) -> Completer:
    """The model to ask; raises ValueError (the verdicts' error) when there is none."""
    if spec.endpoint is not None:
        check_allowed(spec.endpoint, spec.model, resources.allowed_models)
        return EndpointCompleter(spec.endpoint, spec.model, spec.timeout_s, resources.http)
    if resources.completer is None:
        raise ValueError(
            "no judge model: this server has no engine to judge with; name an 'endpoint'"
        )
    return resources.completer


def _failure_reason(exc: BaseException, spec: JudgeSpec) -> str:
    if isinstance(exc, TimeoutError):
        return f"the judge model did not answer within {spec.timeout_s:g}s"
    return f"the judge model failed: {type(exc).__name__}: {exc}"


class _Asker:
    """Completions from the judge model with the spec's settings, a deadline and request ids."""

    def __init__(self, spec: JudgeSpec, resources: VerifierResources) -> None:
        self.spec = spec
        self.unavailable: str | None = None
        self.model: Completer | None = None
        try:
            self.model = judge_model(spec, resources)
        except TargetNotAllowedError:
            raise  # the request fails before generating, not each verdict after
        except ValueError as exc:
            self.unavailable = str(exc)
        self._calls = 0

    async def ask(self, prompts: Sequence[str], request_id: str) -> list[Completion]:
        assert self.model is not None
        self._calls += 1
        call_id = f"{request_id or uuid.uuid4().hex}-judge{self._calls}"
        async with asyncio.timeout(self.spec.timeout_s):
            return await self.model.complete(
                prompts, self.spec.max_tokens, self.spec.top_logprobs, call_id
            )


class PointwiseJudge:
    """Judges each candidate alone; candidates ready together share one batch."""

    Spec: ClassVar[type[VerifierSpec]] = JudgeSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, JudgeSpec)
        self.spec = spec
        self._asker = _Asker(spec, resources)
        self._request_id = ""
        self._batches: Coalescer[str, tuple[Completion, int]] = Coalescer(self._ask)

    async def _ask(self, prompts: Sequence[str]) -> list[tuple[Completion, int]]:
        completions = await self._asker.ask(prompts, self._request_id)
        return [(c, len(prompts)) for c in completions]

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Ask the judge about ``candidate``; an error verdict when it cannot say."""
        if self._asker.unavailable is not None:
            return Verdict.failure("judge", self._asker.unavailable)
        self._request_id = ctx.request_id  # one verifier instance serves one request
        prompt = render_pointwise(self.spec, ctx.prompt, candidate.text)
        try:
            completion, batch = await self._batches.submit(prompt)
        except Exception as exc:
            return Verdict.failure("judge", _failure_reason(exc, self.spec))
        verdict = self._read(completion)
        verdict.detail += f"; judged in a batch of {batch}"
        verdict.tokens = completion.tokens
        return verdict

    def _read(self, completion: Completion) -> Verdict:
        spec = self.spec
        reading = (
            judge_scoring.scale(completion)
            if spec.scale == "1-10"
            else judge_scoring.binary(completion, spec.positive, spec.negative)
        )
        if reading is None:
            return Verdict.failure("judge", f"unreadable judge answer: {completion.text[:80]!r}")
        return Verdict("judge", reading.value, reading.value >= spec.threshold, reading.detail)


class ListwiseJudge:
    """Shows all K in a shuffled order and asks for the best one."""

    Spec: ClassVar[type[VerifierSpec]] = JudgeSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, JudgeSpec)
        self.spec = spec
        self._asker = _Asker(spec, resources)

    async def verify_all(
        self, ctx: RequestContext, candidates: Sequence[Candidate]
    ) -> list[Verdict]:
        """One judge call for the whole set; every verdict an error when it cannot say."""
        if self._asker.unavailable is not None:
            return [Verdict.failure("judge", self._asker.unavailable) for _ in candidates]
        order = list(range(len(candidates)))
        # Seeded by the spec and the question: reproducible, and not one fixed permutation
        # for every request (which would turn the judge's position bias into an index bias).
        random.Random(f"{self.spec.seed}\0{ctx.prompt}").shuffle(order)
        prompt = render_listwise(self.spec, ctx.prompt, [candidates[i].text for i in order])
        try:
            (completion,) = await self._asker.ask([prompt], ctx.request_id)
        except Exception as exc:
            return [Verdict.failure("judge", _failure_reason(exc, self.spec)) for _ in candidates]
        read = judge_scoring.choice(completion, len(candidates))
        if read is None:
            error = f"unreadable judge answer: {completion.text[:80]!r}"
            verdicts = [Verdict.failure("judge", error) for _ in candidates]
        else:
            verdicts = _listwise_verdicts(read[0], order, read[1])
        verdicts[0].tokens = completion.tokens  # one call for the set: count it once
        return verdicts


def _listwise_verdicts(shown_probs: list[float], order: list[int], how: str) -> list[Verdict]:
    probs = [0.0] * len(order)
    shown_at = [0] * len(order)
    for position, index in enumerate(order):
        probs[index] = shown_probs[position]
        shown_at[index] = position + 1
    best = max(range(len(probs)), key=lambda i: (probs[i], -i))
    top = probs[best]
    return [
        Verdict(
            "judge",
            p / top if top > 0 else 0.0,
            i == best,
            f"shown as answer {shown_at[i]}; P(best)={p:.3f} {how}; "
            f"judge's pick: candidate {best} (answer {shown_at[best]})",
        )
        for i, p in enumerate(probs)
    ]


class _JudgeFactory:
    """The ``judge`` type: pointwise or listwise by ``mode`` (the registry calls this)."""

    Spec: ClassVar[type[VerifierSpec]] = JudgeSpec

    def __call__(
        self, spec: VerifierSpec, resources: VerifierResources
    ) -> PointwiseJudge | ListwiseJudge:
        assert isinstance(spec, JudgeSpec)
        if spec.mode == "listwise":
            return ListwiseJudge(spec, resources)
        return PointwiseJudge(spec, resources)


judge = _JudgeFactory()
