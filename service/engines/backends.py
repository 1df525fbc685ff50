"""The remote engine's backends: which ones take requests, and which one gets the next.

Two signals take a backend out of rotation:

- active: its ``/v1/models`` probe fails (every ``backend_health_interval_s``); it is back once
  a probe passes.
- passive, as Envoy's outlier detection: ``backend_max_failures`` requests in a row that failed
  on it (an error, a broken stream, or no first token within its first-token timeout) eject it
  for ``backend_ejection_s``, twice that for each repeated ejection, up to ``MAX_EJECTION_S``.
  Once the cool-down ends it is on probation, one request at a time: the first failure ejects
  it again, the first success clears its record. A backend that answers its probe but never
  sends a token (wedged) is caught only by this. The last usable backend is never ejected:
  there would be nowhere else to send the work.

The first-token timeout of a request is ``backend_first_token_timeout_s``, or
``FIRST_TOKEN_FACTOR`` times the usual time to first token of the other usable backends when
that is longer. Without another usable backend there is no such timeout (nowhere to retry):
the request deadline rules.

Each change of a backend between usable and not is logged and shown by ``bestofk_backend_up``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from bestofk.service.engines.base import EngineHealth
from bestofk.service.engines.errors import EngineError, EngineUnavailableError
from bestofk.verifiers.openai_http import EndpointError, PooledClient, get_json

if TYPE_CHECKING:
    from bestofk.service.metrics import Metrics
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)
E = TypeVar("E", bound=EngineError)

FIRST_TOKEN_FACTOR = 10.0
"""How many times its peers' usual time to first token a backend may take before a request
gives up on it and goes elsewhere."""
TTFT_WEIGHT = 0.2
"""Weight of the newest sample in a backend's moving average of time to first token."""
PROBE_TIMEOUT_S = 5.0
AFFINITY_SIZE = 4096
"""Requests whose backend is remembered, so a later wave of one goes where its first went
(its prompt is in that backend's prefix cache); the oldest is forgotten first."""
MAX_EJECTION_S = 300.0
"""The longest cool-down a repeatedly ejected backend gets (each ejection doubles the last).
No setting: five minutes bounds how long a recovered backend sits idle, whatever
``backend_ejection_s`` is; raise it here if a use needs longer."""


@dataclass(slots=True)
class Backend:
    """One base URL and what we know of it."""

    url: str
    healthy: bool = False
    """Its last health check passed (and no request broke on it since)."""
    in_flight: int = 0
    supports_n: bool | None = None
    models: list[str] = field(default_factory=list)
    vllm: bool = False
    """Its ``/v1/models`` says ``owned_by: vllm``: it takes vLLM's request extensions."""
    splits_reasoning: bool = False
    """It has sent a reasoning field (a server started with ``--reasoning-parser``): a
    candidate it sends without one thought nothing, and its content is all answer."""
    failures: int = 0
    """Requests in a row that failed on it."""
    ejections: int = 0
    """Ejections since its last successful request; non-zero once back: on probation."""
    ejected_until: float = 0.0
    """``time.monotonic()`` at which its current ejection ends."""
    ttft_s: float | None = None
    """Moving average of its time to first token."""
    up: bool | None = None
    """Usable, as last reported (log line and ``bestofk_backend_up``); None before that."""
    reason: str = "not checked yet"
    """Why it last failed, for logs and ``/health``."""

    def usable(self, now: float) -> bool:
        """Healthy and not ejected."""
        return self.healthy and now >= self.ejected_until

    @property
    def label(self) -> str:
        """The URL without credentials, for logs and metric labels."""
        return re.sub(r"//[^/@]*@", "//", self.url)


def _normalise(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class BackendPool:
    """The backends, their health checks, outlier ejection and routing."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if not settings.backends:
            raise ValueError("the openai engine needs at least one backend URL")
        self.settings = settings
        self.metrics = metrics
        self.backends = [
            Backend(_normalise(u), supports_n=settings.backend_supports_n)
            for u in settings.backends
        ]
        self._next_check: float | None = None
        """When the next round of health checks is due; None until the first one is done."""
        self._affinity: OrderedDict[str, Backend] = OrderedDict()
        """Each recent request's backend (:meth:`pick`)."""
        for backend in self.backends:
            metrics.backend_up(backend.label, False)

    # --- routing ----------------------------------------------------------------------------

    def pick(self, request_id: str | None = None, continuing: bool = False) -> Backend:
        """The usable backend with the fewest requests in flight, or (``continuing``: a later
        wave of ``request_id``) the one that request's first wave went to while it is usable;
        EngineUnavailableError (with the time the state can next change) when there is none."""
        sticky = self._affinity.get(request_id) if continuing and request_id else None
        backend = sticky if sticky is not None and sticky.usable(time.monotonic()) else None
        backend = backend or self._least_busy(None)
        if backend is None:
            health = self.health()
            raise EngineUnavailableError(
                f"the engine is not ready: {health.status} ({health.detail})",
                retry_after_s=health.retry_after_s,
            )
        if request_id is not None:
            self.remember(request_id, backend)
        return backend

    def remember(self, request_id: str, backend: Backend) -> None:
        """``request_id``'s candidates are on ``backend``: later waves go there too."""
        self._affinity[request_id] = backend
        self._affinity.move_to_end(request_id)
        while len(self._affinity) > AFFINITY_SIZE:
            self._affinity.popitem(last=False)

    def alternative(self, tried: Backend) -> Backend | None:
        """Where to retry a request that failed on ``tried``, if anywhere."""
        return self._least_busy(tried)

    def _least_busy(self, exclude: Backend | None) -> Backend | None:
        now = time.monotonic()
        usable = [b for b in self.backends if b is not exclude and b.usable(now)]
        # A backend on probation takes one request at a time: if it is still wedged, one
        # request waits out the first-token timeout, not every request routed meanwhile.
        return min(usable, key=lambda b: (b.ejections > 0 and b.in_flight > 0, b.in_flight),
                   default=None)  # fmt: skip

    def first_token_timeout(self, backend: Backend) -> float | None:
        """How long a request waits for ``backend``'s first token before going elsewhere;
        None (only the request deadline) when there is nowhere else to go."""
        now = time.monotonic()
        peers = [b for b in self.backends if b is not backend and b.usable(now)]
        if not peers:
            return None
        usual = [b.ttft_s for b in peers if b.ttft_s is not None]
        typical = statistics.median(usual) if usual else 0.0
        return max(self.settings.backend_first_token_timeout_s, FIRST_TOKEN_FACTOR * typical)

    def health(self) -> EngineHealth:
        """``ready`` while a backend is usable; else why not, and when that can change."""
        now = time.monotonic()
        if any(b.usable(now) for b in self.backends):
            return EngineHealth("ready")
        if self._next_check is None:
            return EngineHealth("loading", PROBE_TIMEOUT_S, "the first health checks are running")
        changes = [self._next_check - now]
        changes += [b.ejected_until - now for b in self.backends if b.healthy]
        detail = "; ".join(f"{b.label} {self._why_not(b, now)}" for b in self.backends)
        return EngineHealth("no_healthy_backend", max(0.0, min(changes)), detail)

    @staticmethod
    def _why_not(backend: Backend, now: float) -> str:
        if backend.healthy and now < backend.ejected_until:
            return f"is ejected for {backend.ejected_until - now:.0f} s more: {backend.reason}"
        return backend.reason

    # --- outcomes of requests ---------------------------------------------------------------

    def first_token(self, backend: Backend, seconds: float) -> None:
        """A request got its first token from ``backend`` after ``seconds``."""
        old = backend.ttft_s
        backend.ttft_s = seconds if old is None else old + TTFT_WEIGHT * (seconds - old)

    def succeeded(self, backend: Backend) -> None:
        """A request on ``backend`` ended well: its failure record is cleared."""
        backend.failures = 0
        backend.ejections = 0

    def failed(self, backend: Backend, error: E, down: bool = False) -> E:
        """Count a failed request against ``backend`` (``down``: it broke the connection or
        the protocol, so it is out until a health check passes); returns ``error``."""
        backend.failures += 1
        backend.reason = error.message.removeprefix(f"backend {backend.label} ")
        now = time.monotonic()
        if down:
            backend.healthy = False
        elif (
            (backend.failures >= self.settings.backend_max_failures or backend.ejections)
            and now >= backend.ejected_until
            and any(b.usable(now) for b in self.backends if b is not backend)
        ):
            duration = min(self.settings.backend_ejection_s * 2**backend.ejections,
                           MAX_EJECTION_S)  # fmt: skip
            backend.reason = (
                f"ejected for {duration:g} s after {backend.failures} failed requests in a "
                f"row (last: {backend.reason})"
            )
            backend.ejections += 1
            backend.failures = 0
            backend.ejected_until = now + duration
            # Report the end of the cool-down when it comes, not at the next health check.
            asyncio.get_running_loop().call_later(duration + 0.01, self._report, backend)
        self._report(backend)
        return error

    def _report(self, backend: Backend) -> None:
        """Log and export a change between usable and not (both at WARNING: either is news
        to an operator, and the server's log shows WARNING and up)."""
        up = backend.usable(time.monotonic())
        if up == backend.up:
            return
        backend.up = up
        self.metrics.backend_up(backend.label, up)
        if up:
            log.warning("backend %s is up", backend.label)
        else:
            log.warning("backend %s is down: %s", backend.label, backend.reason)

    # --- health checks ----------------------------------------------------------------------

    async def check(self, http: PooledClient, headers: Mapping[str, str]) -> None:
        """Probe ``/v1/models`` on every backend (it also tells the served model names)."""
        await asyncio.gather(*(self._probe(http, headers, b) for b in self.backends))
        self._next_check = time.monotonic() + self.settings.backend_health_interval_s

    async def _probe(
        self, http: PooledClient, headers: Mapping[str, str], backend: Backend
    ) -> None:
        try:
            models = await get_json(http, backend.url + "/v1/models", PROBE_TIMEOUT_S, headers)
            listed = models.get("data", [])
            backend.models = [m["id"] for m in listed]
            backend.vllm = any(m.get("owned_by") == "vllm" for m in listed)
            backend.healthy = True
        except (EndpointError, TimeoutError, KeyError, TypeError, AttributeError) as exc:
            backend.healthy = False
            backend.reason = f"failed its health check: {exc!r}"
        self._report(backend)
