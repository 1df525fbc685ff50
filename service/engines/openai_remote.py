"""Remote OpenAI-compatible backends (``vllm serve``, SGLang, llama.cpp server…) over HTTP.

The engine holds the backends (:class:`~bestofk.service.engines.backends.BackendPool`: which
one takes a request, health checks, outlier ejection), their pooled connections and the model's
name; each request's K candidates are a
:class:`~bestofk.service.engines.remote_stream.RemoteStream` on one backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from bestofk.service.engines.backends import Backend, BackendPool
from bestofk.service.engines.base import CandidateWatch, EngineHealth, Prompt, SamplingConfig
from bestofk.service.engines.remote_stream import RemoteStream
from bestofk.verifiers.openai_http import PooledClient

if TYPE_CHECKING:
    from bestofk.service.metrics import Metrics
    from bestofk.service.settings import Settings


class OpenAIEngine:
    """Routes each request to the least busy usable backend (:class:`BackendPool`)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.pool = BackendPool(settings, metrics)
        key = settings.backend_api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = PooledClient()
        self._health_task: asyncio.Task[None] | None = None

    @property
    def model_name(self) -> str:
        """The served name, else the configured model, else the first one a backend lists."""
        if self.settings.served_model_name:
            return self.settings.served_model_name
        if self.settings.backend_model:
            return self.settings.backend_model
        for backend in self.pool.backends:
            if backend.models:
                return backend.models[0]
        return "unknown"

    @property
    def health(self) -> EngineHealth:
        """``ready`` while a backend is usable, else ``loading`` or ``no_healthy_backend``."""
        return self.pool.health()

    def model_for(self, backend: Backend) -> str:
        """The model name to send to ``backend``."""
        return self.settings.backend_model or (backend.models[0] if backend.models else "unknown")

    async def start(self) -> None:
        """Check every backend once, then keep checking in the background."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop health checks and close connections."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.http.aclose()

    async def check_health(self) -> None:
        """Probe every backend once."""
        await self.pool.check(self.http, self.headers)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.backend_health_interval_s)
            await self.check_health()

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> RemoteStream:
        """Start K candidates on one backend (a call each, or one of ``n=K``)."""
        return RemoteStream(
            self,
            prompt,
            k,
            sampling,
            request_id,
            self.settings.limits.max_bytes_per_token,
            first_index,
            watch,
        )


__all__ = ["OpenAIEngine"]
