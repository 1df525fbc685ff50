"""One long-lived thread that starts every helper process: sandboxes and verifier workers.

Both set PR_SET_PDEATHSIG (bwrap's ``--die-with-parent``; the verifier workers themselves) so
that they die with the service. It fires when the *thread* that forked them exits, not the
process: a child forked from a worker thread would be killed as soon as the thread pool retired
that thread, warm ones first. This thread lives as long as the service.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class _Spawner:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, start: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="spawner", daemon=True)
                self._thread.start()
        done: Future[T] = Future()
        self._jobs.put((start, done))
        return done

    def _serve(self) -> None:
        while True:
            start, done = self._jobs.get()
            try:
                done.set_result(start())
            except BaseException as exc:
                done.set_exception(exc)


_SPAWNER = _Spawner()


def on_spawner_thread(start: Callable[[], T]) -> Future[T]:
    """Run ``start`` (which forks, or reaps) on the spawner thread; its result comes back."""
    return _SPAWNER.submit(start)
