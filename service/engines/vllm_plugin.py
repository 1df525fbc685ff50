"""bestofk's vLLM general plugin: keeps seeded requests alive on vLLM's CPU build.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes (the API server,
the engine core, the workers), so this runs wherever a model runner may be built, the
``python -m vllm.entrypoints.openai.api_server`` backends started from bestofk's environment
included.

The bug it fixes: when a request's prefill is split over several steps (chunked prefill, which
happens as soon as a batch's prompts exceed the step's token budget), vLLM samples a token for
it at every step and throws the token away until the prefill is done. To keep a seeded request
reproducible it then rewinds the request's generator, ``gen.set_offset(gen.get_offset() - 4)``
in ``GPUModelRunner._bookkeeping_sync``: Philox counters (CUDA) have offsets, but the CPU's
Mersenne Twister does not, so the call raises "CPU Generator does not use offset" and the engine
core dies with every request in it. On CPU the same rewind is a snapshot of the generator's
state before sampling, restored afterwards; seeds then give the same tokens whether a request
ran alone or was chunked under load.
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_bestofk_seed_rewind"


def register() -> None:
    """Entry point (``vllm.general_plugins``): patch the CPU model runner, once per process."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner, _PATCHED, False):
        return
    patch_seed_rewind(CPUModelRunner)


def patch_seed_rewind(runner_cls: Any) -> None:
    """Rewind discarded samples by state snapshot instead of Philox offset on ``runner_cls``."""
    sample = runner_cls._sample
    bookkeeping = runner_cls._bookkeeping_sync

    def _discarded_generators(runner: Any) -> dict[int, Any]:
        batch = runner.input_batch
        if not batch.generators:
            return {}
        mask = runner.discard_request_mask.np[: batch.num_reqs]
        return {
            int(i): batch.generators[int(i)]
            for i in mask.nonzero()[0]
            if int(i) in batch.generators
        }

    def _sample(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The state each partly prefilled seeded request had before this step's sample.
        self._bestofk_snapshots = {
            i: gen.get_state() for i, gen in _discarded_generators(self).items()
        }
        return sample(self, *args, **kwargs)

    def _bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        snapshots: dict[int, Any] = getattr(self, "_bestofk_snapshots", {})
        self._bestofk_snapshots = {}
        generators = self.input_batch.generators
        # Hidden from vLLM's own rewind (it would call set_offset), restored by state here.
        hidden = {i: generators.pop(i) for i in snapshots if i in generators}
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            for i, gen in hidden.items():
                gen.set_state(snapshots[i])
                generators[i] = gen

    runner_cls._sample = _sample
    runner_cls._bookkeeping_sync = _bookkeeping_sync
    setattr(runner_cls, _PATCHED, True)
