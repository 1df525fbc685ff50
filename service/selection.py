"""Combining verdicts into a score, ranking candidates and choosing one.

Combined score = Σ wᵢ·sᵢ / Σ wᵢ. Candidates failing a required verifier rank below every
candidate that passes all required ones. Ties: the lower index (the K samples are drawn alike,
so that is a fair draw among the tied, at no cost); ``tie_break="logprob"``: the higher mean
token logprob first, which the engine must compute for every sampled token.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bestofk.verifiers.answers import answer_keys
from bestofk.verifiers.base import Candidate, Verdict, VerifierSpec

Policy = Literal["argmax", "sample", "vote"]
TieBreak = Literal["logprob", "index"]


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """``argmax``: best-of-K; ``sample``: draw ∝ exp(β·score); ``vote``: heaviest answer cluster."""

    policy: Policy = "argmax"
    beta: float = 5.0
    seed: int | None = None
    extract: str | None = None
    """Answer-extraction regex for ``vote`` (default: boxed, last number, stripped text)."""
    tie_break: TieBreak = "index"
    """Between equal scores: ``index`` the lower index (free: the engine computes nothing for
    it), ``logprob`` the higher mean token logprob first (the engine computes every sampled
    token's logprob for it: about a tenth of the demo model's generation time on CPU)."""

    @property
    def by_logprob(self) -> bool:
        """Whether ties are broken by mean token logprob (so the engine must compute them)."""
        return self.tie_break == "logprob"


@dataclass(slots=True)
class Scored:
    """A candidate with its verdicts and what they add up to."""

    candidate: Candidate
    verdicts: list[Verdict]
    score: float = 0.0
    passed: bool = False
    """Every verifier passed (and there was at least one)."""
    required_ok: bool = True
    """Every required verifier passed."""
    ready_ms: float | None = None
    """When the candidate was finished (generated or given), in ms since the request arrived."""
    verified_ms: float | None = None
    """When its pointwise verifiers were done, in ms since the request arrived."""
    confidence: float | None = None
    """Its lowest group confidence (DeepConf), with confidence-aware stopping."""

    @property
    def cut(self) -> bool:
        """A watch cut it short (confidence-aware stopping): partial, unverified, not chosen."""
        return self.candidate.cut


def combine(scored: Scored, specs: Sequence[VerifierSpec]) -> None:
    """Fill in ``score``, ``passed`` and ``required_ok`` from the verdicts, in place."""
    total_weight = sum(spec.weight for spec in specs)
    weighted = sum(
        spec.weight * min(1.0, max(0.0, v.score))
        for spec, v in zip(specs, scored.verdicts, strict=True)
    )
    scored.score = weighted / total_weight if total_weight > 0 else 0.0
    scored.passed = bool(scored.verdicts) and all(v.passed for v in scored.verdicts)
    scored.required_ok = all(
        v.passed for spec, v in zip(specs, scored.verdicts, strict=True) if spec.required
    )


def rank_key(s: Scored, by_logprob: bool = True) -> tuple[bool, float, float, int]:
    """Sort key, best first when sorted descending."""
    logprob = s.candidate.mean_logprob if by_logprob else None
    return (
        s.required_ok,
        s.score,
        logprob if logprob is not None else -math.inf,
        -s.candidate.index,
    )


def ranked(scored: Sequence[Scored], by_logprob: bool = True) -> list[Scored]:
    """Best first."""
    return sorted(scored, key=lambda s: rank_key(s, by_logprob), reverse=True)


def select(
    scored: Sequence[Scored], config: SelectionConfig, answers: Mapping[int, str] | None = None
) -> Scored:
    """The chosen candidate under ``config.policy``.

    ``answers``: for ``vote``, each candidate's answer key by index, extracted off the event
    loop by the caller (the pipeline); a candidate without one joins no cluster. None: they are
    extracted here, which only offline callers may afford.
    """
    if not scored:
        raise ValueError("nothing to select from")
    order = ranked(scored, config.by_logprob)
    if config.policy == "argmax":
        return order[0]
    # Required verifiers gate the other policies too: draw only among those that pass them.
    pool = [s for s in order if s.required_ok] or order
    if config.policy == "sample":
        rng = random.Random(config.seed)
        return rng.choices(pool, weights=_sample_weights(pool, config.beta), k=1)[0]
    if answers is None:
        keys = answer_keys([s.candidate.text for s in pool], config.extract)
        answers = {s.candidate.index: key for s, key in zip(pool, keys, strict=True)}
    return vote_clusters(pool, answers, config.by_logprob)[0].members[0]


@dataclass(frozen=True, slots=True)
class Cluster:
    """Candidates with the same answer under the ``vote`` policy."""

    answer: str | int
    """The answer key; a candidate without one is a cluster of its own, keyed by its index."""
    members: list[Scored]
    """Best first."""
    weight: float
    """The sum of the members' scores."""


def vote_clusters(
    pool: Sequence[Scored], answers: Mapping[int, str], by_logprob: bool = True
) -> list[Cluster]:
    """``pool`` (ranked, best first) clustered by answer, heaviest first: the ``vote`` policy
    chooses the best member of the first."""
    grouped: dict[str | int, list[Scored]] = defaultdict(list)
    for s in pool:
        grouped[answers.get(s.candidate.index, s.candidate.index)].append(s)
    clusters = [Cluster(key, m, sum(s.score for s in m)) for key, m in grouped.items()]
    # Cluster weight = sum of member scores; an all-zero field falls back to cluster size.
    return sorted(
        clusters,
        key=lambda c: (c.weight, len(c.members), rank_key(c.members[0], by_logprob)),
        reverse=True,
    )


def _sample_weights(pool: Sequence[Scored], beta: float) -> list[float]:
    """exp(β·score), relative to the top score so that large β cannot overflow."""
    top = max(s.score for s in pool)
    return [math.exp(beta * (s.score - top)) for s in pool]


def choice_probabilities(
    scored: Sequence[Scored], config: SelectionConfig, answers: Mapping[int, str] | None = None
) -> list[tuple[Scored, float]]:
    """What :func:`select` chooses, as probabilities: the one candidate ``argmax`` and ``vote``
    choose, or every candidate ``sample`` may draw with its chance (offline evaluation).
    ``answers``: as for :func:`select`."""
    if config.policy != "sample":
        return [(select(scored, config, answers), 1.0)]
    order = ranked(scored, config.by_logprob)
    pool = [s for s in order if s.required_ok] or order
    weights = _sample_weights(pool, config.beta)
    total = sum(weights)
    return [(s, w / total) for s, w in zip(pool, weights, strict=True)]
