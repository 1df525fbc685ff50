"""`reward_model`: a vLLM reward/classification model scores each (prompt, candidate).

Where the model runs:

- ``model`` alone: a local model loaded into this process with vLLM's pooling runner
  (``LLM(model, runner="pooling")``), once per path, and kept; ``classify`` runs in a worker
  thread, one batch at a time per model (the offline ``LLM`` is not thread-safe).
- ``endpoint``: a remote vLLM server's ``/classify`` (``api: classify``, the default) or
  ``/pooling`` (``api: pooling``) endpoint; ``model`` then names the served model.

Raw outputs map to [0, 1] by one rule: **probabilities as they are, raw scores through a
sigmoid.** ``classify`` (local or remote) returns probabilities (vLLM applies the model's
activation: a sigmoid for one label, a softmax for several); ``/pooling`` is asked for the raw
head output (``use_activation: false``), a logit for a reward model. With several outputs the
score is the one at ``label`` (default: the last, the positive class of a binary classifier).

Candidates ready together are scored in one batch (:mod:`bestofk.verifiers.batching`).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from bestofk.verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_blocking,
)
from bestofk.verifiers.batching import Coalescer
from bestofk.verifiers.endpoint import check_allowed
from bestofk.verifiers.openai_http import base_url, post_json, with_served_model
from bestofk.verifiers.templates import check_template

DEFAULT_ENGINE_ARGS: Mapping[str, Any] = {
    "enforce_eager": True,
    # Beside a serving engine that holds most of the memory; on the CPU build this is a share
    # of RAM and the KV cache size comes from VLLM_CPU_KVCACHE_SPACE.
    "gpu_memory_utilization": 0.1,
}


class RewardModelSpec(VerifierSpec):
    """A local model path, or a remote vLLM ``endpoint`` (and its served ``model``)."""

    type: Literal["reward_model"] = "reward_model"
    model: str | None = Field(default=None, max_length=1000)
    endpoint: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    api: Literal["classify", "pooling"] = "classify"
    label: int | None = Field(default=None, ge=0, le=1000)
    template: str = Field(default="{prompt}\n{candidate}", max_length=8000)
    """What the model reads; fields ``{prompt}`` and ``{candidate}``."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _where(self) -> RewardModelSpec:
        if self.model is None and self.endpoint is None:
            raise ValueError("reward_model needs 'model' (a local path) or 'endpoint'")
        check_template(self.template, {"prompt", "candidate"})
        return self


def to_score(raw: Sequence[float], label: int | None, probabilities: bool) -> float:
    """The documented rule: the chosen output, a probability as is, a raw score via sigmoid."""
    if not raw:
        raise ValueError("the model returned no scores")
    index = len(raw) - 1 if label is None else label
    if index >= len(raw):
        raise ValueError(f"label {index} out of range: the model has {len(raw)} outputs")
    value = float(raw[index])
    if probabilities:
        return min(1.0, max(0.0, value))
    return 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, value))))


class _LocalModels:
    """In-process pooling engines, one per model path, loaded on first use and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Any, threading.Lock]] = {}

    def get(self, path: str, engine_args: Mapping[str, Any]) -> tuple[Any, threading.Lock]:
        # One lock for loading: two first requests for a model must not load it twice.
        with self._lock:
            if path not in self._models:
                from vllm import LLM

                llm = LLM(model=path, runner="pooling", **dict(engine_args))
                self._models[path] = (llm, threading.Lock())
            return self._models[path]

    def classify(
        self, path: str, engine_args: Mapping[str, Any], texts: Sequence[str]
    ) -> list[list[float]]:
        llm, lock = self.get(path, engine_args)
        with lock:
            outputs = llm.classify(list(texts), use_tqdm=False)
        return [list(o.outputs.probs) for o in outputs]


LOCAL_MODELS = _LocalModels()


class RewardModelVerifier:
    """Scores candidates with a reward model; candidates ready together go in one batch."""

    Spec: ClassVar[type[VerifierSpec]] = RewardModelSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, RewardModelSpec)
        self.spec = spec
        # A target the server does not allow fails the request here, before generating.
        check_allowed(spec.endpoint, spec.model, resources.allowed_models)
        self._http = resources.http
        self._batches: Coalescer[str, list[float]] = Coalescer(self._score_batch)

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Score one candidate (batched with those ready at the same moment)."""
        text = self.spec.template.format_map({"prompt": ctx.prompt, "candidate": candidate.text})
        try:
            raw = await self._batches.submit(text)
            score = to_score(raw, self.spec.label, probabilities=self.spec.api == "classify")
        except TimeoutError:
            return Verdict.failure(
                "reward_model", f"the reward model did not answer within {self.spec.timeout_s:g}s"
            )
        except Exception as exc:
            return Verdict.failure("reward_model", f"{type(exc).__name__}: {exc}")
        shown = ", ".join(f"{v:.4g}" for v in raw[:4])
        return Verdict(
            "reward_model", score, score >= self.spec.threshold, f"score {score:.3f} (raw {shown})"
        )

    async def _score_batch(self, texts: Sequence[str]) -> list[list[float]]:
        spec = self.spec
        if spec.endpoint is not None:
            async with asyncio.timeout(spec.timeout_s):
                return await self._remote(spec.endpoint, texts)
        assert spec.model is not None
        # No timeout on the local call: a worker thread cannot be interrupted, and the first
        # call loads the model (tens of seconds on CPU). The request deadline still applies.
        return await run_blocking(LOCAL_MODELS.classify, spec.model, DEFAULT_ENGINE_ARGS, texts)

    async def _remote(self, endpoint: str, texts: Sequence[str]) -> list[list[float]]:
        base = base_url(endpoint)
        timeout_s = self.spec.timeout_s
        path = "/classify" if self.spec.api == "classify" else "/pooling"

        async def call(model: str) -> dict[str, Any]:
            body: dict[str, Any] = {"model": model, "input": list(texts)}
            if self.spec.api == "pooling":
                body["use_activation"] = False  # the raw head output; the sigmoid is ours
            return await post_json(self._http, base + path, body, timeout_s)

        if self.spec.model is not None:
            data = await call(self.spec.model)
        else:
            data = await with_served_model(self._http, base, timeout_s, call)
        rows = data.get("data")
        if not isinstance(rows, list) or len(rows) != len(texts):
            raise ValueError(f"expected {len(texts)} results from {path}, got {rows!r:.200}")
        out: list[list[float]] = [[] for _ in texts]
        for position, row in enumerate(rows):
            index = int(row.get("index", position))
            values = row.get("probs") if self.spec.api == "classify" else row.get("data")
            out[index] = _flatten(values)
        return out


def _flatten(values: Any) -> list[float]:
    """A score vector from ``probs`` or pooling ``data`` (per-token rows: the last token's)."""
    if isinstance(values, list) and values and isinstance(values[-1], list):
        values = values[-1]
    if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"unexpected scores: {values!r:.100}")
    return [float(v) for v in values]
