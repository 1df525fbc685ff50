"""Bodies of OpenRLHF's remote reward protocol (``POST /get_reward``), as its
``openrlhf.cli.serve_rm`` serves it and its ``--remote_rm_url`` client sends it."""

from __future__ import annotations

from pydantic import Field, model_validator

from bestofk.service.schemas.native import Strict

MAX_QUERIES = 4096
"""One rollout batch; OpenRLHF splits a batch evenly over its ``--remote_rm_url`` servers."""


class RewardRequest(Strict):
    """``query[i]`` is prompt and response together, ``prompts[i]`` the prompt it starts with,
    ``labels[i]`` what decides the reward (see ``bestofk.service.routes.reward``)."""

    query: list[str] = Field(min_length=1, max_length=MAX_QUERIES)
    prompts: list[str]
    labels: list[str | None] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> RewardRequest:
        n = len(self.query)
        if len(self.prompts) != n or (self.labels is not None and len(self.labels) != n):
            raise ValueError(
                f"'query', 'prompts' and 'labels' must have one entry per sample ({n} queries, "
                f"{len(self.prompts)} prompts, "
                f"{'no' if self.labels is None else len(self.labels)} labels)"
            )
        return self


class RewardResponse(Strict):
    """What OpenRLHF reads: ``rewards`` (the advantage's input), ``scores`` (0/1, for its
    dynamic filtering) and ``extra_logs`` (lists logged beside the reward)."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]
