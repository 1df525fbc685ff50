"""Aggregation, required verifiers, tie-breaks and policies (pure logic)."""

from __future__ import annotations

import collections

from bestofk.service.selection import Scored, SelectionConfig, combine, select
from bestofk.verifiers.base import Candidate, Verdict, VerifierSpec


def scored(index: int, scores: list[float], specs: list[VerifierSpec], **kw: object) -> Scored:
    candidate = Candidate(index, kw.pop("text", f"c{index}"), mean_logprob=kw.pop("lp", None))  # type: ignore[arg-type]
    verdicts = [Verdict(s.type, sc, sc >= 1.0) for s, sc in zip(specs, scores, strict=True)]
    out = Scored(candidate, verdicts)
    combine(out, specs)
    return out


A = VerifierSpec(type="a", weight=1.0)
B = VerifierSpec(type="b", weight=3.0)
REQ = VerifierSpec(type="req", weight=1.0, required=True)


def test_weighted_mean() -> None:
    s = scored(0, [1.0, 0.5], [A, B])
    assert s.score == (1.0 + 3 * 0.5) / 4
    assert not s.passed


def test_zero_total_weight_scores_zero() -> None:
    zero = VerifierSpec(type="gate", weight=0.0, required=True)
    s = scored(0, [1.0], [zero])
    assert s.score == 0.0 and s.passed and s.required_ok


def test_failing_required_ranks_below_every_passing_one() -> None:
    specs = [REQ, B]
    high_but_failing = scored(0, [0.0, 1.0], specs)  # 0.75
    low_but_passing = scored(1, [1.0, 0.0], specs)  # 0.25
    assert high_but_failing.score > low_but_passing.score
    assert select([high_but_failing, low_but_passing], SelectionConfig()) is low_but_passing


def test_logprob_tie_break_goes_to_higher_logprob_then_lower_index() -> None:
    specs = [A]
    by_logprob = SelectionConfig(tie_break="logprob")
    a = scored(0, [1.0], specs, lp=-2.0)
    b = scored(1, [1.0], specs, lp=-1.0)
    c = scored(2, [1.0], specs, lp=-1.0)
    assert select([a, b, c], by_logprob) is b
    d, e = scored(3, [1.0], specs), scored(4, [1.0], specs)
    assert select([e, d], by_logprob) is d


def test_default_tie_break_is_the_index_and_ignores_logprobs() -> None:
    specs = [A]
    a = scored(0, [1.0], specs, lp=-2.0)
    b = scored(1, [1.0], specs, lp=-1.0)
    worse = scored(2, [0.0], specs, lp=-0.1)
    assert select([worse, b, a], SelectionConfig()) is a
    assert select([worse, b, a], SelectionConfig(tie_break="logprob")) is b


def test_sample_is_seeded_and_tilted_by_beta() -> None:
    specs = [A]
    pool = [scored(i, [1.0 if i == 0 else 0.0], specs) for i in range(4)]
    picks = [select(pool, SelectionConfig("sample", beta=5.0, seed=s)).candidate.index
             for s in range(400)]  # fmt: skip
    counts = collections.Counter(picks)
    # exp(5) / (exp(5) + 3) ≈ 0.98 of the mass on the passing candidate.
    assert counts[0] > 350
    flat = [select(pool, SelectionConfig("sample", beta=0.0, seed=s)).candidate.index
            for s in range(400)]  # fmt: skip
    assert 60 < collections.Counter(flat)[0] < 140  # uniform: about 100
    same = {select(pool, SelectionConfig("sample", beta=1.0, seed=3)).candidate.index
            for _ in range(5)}  # fmt: skip
    assert len(same) == 1


def test_vote_picks_heaviest_cluster_across_formats() -> None:
    specs = [A]
    texts = ["120", "120.0", "The answer is 120", "24", "24", "25"]
    pool = [scored(i, [0.5], specs, text=t) for i, t in enumerate(texts)]
    chosen = select(pool, SelectionConfig("vote"))
    assert chosen.candidate.index in (0, 1, 2)
