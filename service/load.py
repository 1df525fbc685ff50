"""Load-aware K: under load a request samples fewer candidates instead of queueing them.

An engine runs at most so many sequences at once (vLLM's ``max_num_seqs``); past it, new
sequences wait in its queue, and every request in flight slows down. With ``load_aware_k`` a
request gets at most the slots still free when it is admitted (``max_num_seqs`` less the
candidates of the requests in flight), never fewer than ``min_k``, so a burst is served at once
with smaller K rather than late with full K.

The load is bestofk's own count of candidates in flight, taken when a request is admitted and
given back when it finishes: exact for what bestofk sends, and up to date within a burst, when
requests admitted a moment ago have not reached the engine yet (the engine's own queue depth
would say nothing of them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class LoadAwareK:
    """The K the load allows, and the candidates in flight it is reckoned from.

    ``max_num_seqs`` None: read from the in-process engine once it is up (its scheduler's
    ``max_num_seqs``). ``workers``: server processes sharing the engine, each reckoning its
    own requests against its share.
    """

    def __init__(
        self, engine: Any, min_k: int, max_num_seqs: int | None = None, workers: int = 1
    ) -> None:
        self.engine = engine
        self.min_k = min_k
        self.workers = workers
        self._capacity = None if max_num_seqs is None else max(1, max_num_seqs // workers)
        self.inflight = 0
        """Candidates of the requests running now (each counted with the K it was given)."""

    @property
    def capacity(self) -> int | None:
        """Sequences this process may have in the engine at once; None when unknown."""
        if self._capacity is None:
            seqs = engine_max_num_seqs(self.engine)
            if seqs is not None:
                self._capacity = max(1, seqs // self.workers)
                log.info("load-aware K: up to %d candidates in flight", self._capacity)
        return self._capacity

    def choose(self, k: int, queued: int = 0) -> int:
        """The K for a request that asks ``k`` now; ``queued``: requests waiting for admission,
        which mean the server is saturated whatever the count says."""
        capacity = self.capacity
        if capacity is None:
            return k
        free = 0 if queued else capacity - self.inflight
        if k <= free:
            return k
        return max(min(k, self.min_k), free)

    @contextlib.contextmanager
    def holding(self, k: int) -> Iterator[None]:
        """Count ``k`` candidates in flight for the body of the ``with``."""
        self.inflight += k
        try:
            yield
        finally:
            self.inflight -= k


def engine_max_num_seqs(engine: Any) -> int | None:
    """The in-process vLLM engine's ``max_num_seqs`` as its scheduler resolved it (its
    default depends on the platform); None for an engine without one (remote backends) or
    one not yet loaded."""
    try:
        seqs = engine.llm.vllm_config.scheduler_config.max_num_seqs
    except Exception:  # not loaded, restarting, or no in-process vLLM at all
        return None
    return seqs if isinstance(seqs, int) and seqs > 0 else None
