"""Confidence-aware stopping: DeepConf's online mode (Fu et al., arXiv 2508.15260).

A candidate's *token confidence* is the negative mean of the top-k logprobs at a position
(high when the model's distribution is peaked, low when it hesitates between many tokens); its
*group confidence* is the mean token confidence over a sliding window of the last ``window``
tokens, and its *lowest group confidence* the least of those over the whole trace: DeepConf's
best single signal of a trace going wrong. Online, a warm-up wave of the same request runs to
the end, unwatched; its traces' lowest group confidences set the threshold at a percentile
(DeepConf-low keeps the top 10 %: the 90th percentile; DeepConf-high the top 90 %: the 10th),
and every later candidate is cut the moment a window of it falls below.

The threshold is never taken from the first candidates to finish alone: they are the shortest,
and a threshold from short traces is one every longer trace misses. Calibration takes every
warm-up trace, finished however it finished.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bestofk.verifiers.base import TokenLogprob

TOP_LOGPROBS = 20
"""Alternatives per token the confidence is the mean over: DeepConf's reference code (and the
most vLLM's server returns by default, ``max_logprobs``)."""
WINDOW = 16
"""Tokens per group. DeepConf uses 2048 for reasoning traces of ~10k tokens and more; the
demo's outputs are 3 to 60 tokens (a number, a date, a few reasoning steps), which a window of
2048 would never fill, and a window of 16 still smooths a single uncertain token (a digit
whose value the model does not know) into its neighbours. It is also what one engine delta
brings (``STREAM_INTERVAL``), so each delta completes a fresh window to check."""
LOGPROB_FLOOR = -9999.0
"""A logprob of -inf (a token the sampling settings ruled out) counts as this."""

Keep = Literal["low", "high"]
KEEP_SHARE: dict[Keep, float] = {"low": 0.1, "high": 0.9}
"""Share of warm-up traces each DeepConf variant would keep: ``low`` cuts hard (the threshold
is the 90th percentile), ``high`` cuts only the worst (the 10th)."""


def token_confidence(token: TokenLogprob, top_logprobs: int = TOP_LOGPROBS) -> float:
    """``-mean`` of the ``top_logprobs`` largest logprobs at this position.

    ``token.top`` holds the alternatives without the sampled token; the sampled token is
    among the top k unless it was unlikely, when vLLM returns it beside the k others."""
    values = sorted((_finite(token.logprob), *(_finite(v) for _, v in token.top)), reverse=True)
    top = values[:top_logprobs]
    return -sum(top) / len(top)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


@dataclass(slots=True)
class GroupConfidence:
    """One trace's group confidences, fed a token at a time."""

    window: int = WINDOW
    tokens: int = 0
    lowest_full: float = math.inf
    """The least group confidence over the full windows so far (inf before the first)."""
    _recent: deque[float] = field(default_factory=deque)
    _sum: float = 0.0

    def add(self, confidence: float) -> float | None:
        """Add one token's confidence; the group confidence of the window it completes (None
        while fewer than ``window`` tokens have come)."""
        self.tokens += 1
        self._recent.append(confidence)
        self._sum += confidence
        if len(self._recent) > self.window:
            self._sum -= self._recent.popleft()
        if len(self._recent) < self.window:
            return None
        group = self._sum / self.window
        self.lowest_full = min(self.lowest_full, group)
        return group

    @property
    def lowest(self) -> float | None:
        """The lowest group confidence: over full windows, else (a trace shorter than one
        window) the mean of what there is; None before any token."""
        if math.isfinite(self.lowest_full):
            return self.lowest_full
        return self._sum / len(self._recent) if self._recent else None


def lowest_group_confidence(
    logprobs: Iterable[TokenLogprob], window: int = WINDOW, top_logprobs: int = TOP_LOGPROBS
) -> float | None:
    """A finished trace's lowest group confidence; None for a trace with no tokens."""
    groups = GroupConfidence(window)
    for token in logprobs:
        groups.add(token_confidence(token, top_logprobs))
    return groups.lowest


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly (numpy's
    default, as DeepConf's ``np.percentile``)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def calibrate(lowest: Sequence[float], keep: Keep | float = "high") -> float:
    """The threshold that would have kept the top ``keep`` share of the warm-up traces whose
    lowest group confidences are ``lowest`` (DeepConf's ``low``: 10 %, ``high``: 90 %)."""
    share = KEEP_SHARE[keep] if isinstance(keep, str) else keep
    if not 0.0 < share <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {share}")
    return percentile(lowest, 100 * (1 - share))


@dataclass(frozen=True, slots=True)
class ConfidenceConfig:
    """A request's confidence-aware stopping (its ``confidence`` field)."""

    keep: Keep | float = "high"
    """The share of warm-up traces the threshold would keep: ``high`` (90 %, the default:
    it cuts only traces worse than nearly all the warm-up's, as DeepConf-high, whose accuracy
    matched full voting), ``low`` (10 %: DeepConf-low, far fewer tokens, some accuracy), or a
    share in (0, 1]."""
    warmup: int | None = None
    """Candidates in the warm-up wave, run to the end unwatched; None: adaptive K's first wave,
    else half of K (rounded up). At least one candidate is always watched, when K allows."""
    window: int = WINDOW
    top_logprobs: int = TOP_LOGPROBS

    def warmup_size(self, k: int, first_wave: int | None = None) -> int:
        """The warm-up wave's size for a request of ``k`` candidates."""
        size = self.warmup or first_wave or math.ceil(k / 2)
        return max(1, min(size, k))

    def lowest(self, trace: Iterable[TokenLogprob]) -> float | None:
        """A finished trace's lowest group confidence, by this window and ``top_logprobs``."""
        return lowest_group_confidence(trace, self.window, self.top_logprobs)

    def threshold(self, lowest: Iterable[float | None]) -> float | None:
        """The threshold from the warm-up's finished traces' lowest group confidences
        (:meth:`lowest`; None for a trace without tokens); None when none has a token (nothing
        is cut then)."""
        values = [v for v in lowest if v is not None]
        return calibrate(values, self.keep) if values else None


class ConfidenceWatch:
    """A :class:`~bestofk.service.engines.base.CandidateWatch` that cuts a candidate as soon as
    a window of it falls below ``threshold`` (None: watch and cut nothing, as in a warm-up).

    Each candidate's lowest group confidence so far stays in :attr:`lowest`, and the cut ones'
    indices in :attr:`cut`.
    """

    def __init__(
        self,
        threshold: float | None,
        window: int = WINDOW,
        top_logprobs: int = TOP_LOGPROBS,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.top_logprobs = top_logprobs
        self._groups: dict[int, GroupConfidence] = {}
        self.cut: set[int] = set()

    def delta(self, index: int, logprobs: Sequence[TokenLogprob]) -> bool:
        """Add candidate ``index``'s newest tokens; True (cut it) when a window they complete
        is below the threshold. Every window is checked, not only the last, as DeepConf checks
        each token: a delta brings several."""
        groups = self._group(index)
        below = False
        for token in logprobs:
            group = groups.add(token_confidence(token, self.top_logprobs))
            if group is not None and self.threshold is not None and group < self.threshold:
                below = True
        if below:
            self.cut.add(index)
        return below

    def _group(self, index: int) -> GroupConfidence:
        groups = self._groups.get(index)
        if groups is None:
            groups = self._groups[index] = GroupConfidence(self.window)
        return groups

    def lowest(self, index: int) -> float | None:
        """Candidate ``index``'s lowest group confidence over the tokens watched so far."""
        groups = self._groups.get(index)
        return None if groups is None else groups.lowest

    def finish(self, index: int, logprobs: Sequence[TokenLogprob]) -> float | None:
        """Finished candidate ``index``'s lowest group confidence over all its ``logprobs``, of
        which the watch saw the first ones: only the rest (the delta that finished it, which
        a watch is not offered) is added, so the figure is :func:`lowest_group_confidence`'s
        for the whole trace."""
        groups = self._group(index)
        for token in logprobs[groups.tokens :]:
            groups.add(token_confidence(token, self.top_logprobs))
        return groups.lowest
