"""``/v1/completions`` with a list of prompts: one best-of-K job per prompt, as vLLM batches
them (choice ``index = prompt_index * n + i``, usage summed), through the official client."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import httpx
import openai
import pytest

from bestofk.tooling.procs import Server, engine_env, start_bestofk

PROMPTS = [
    "What's the factorial of 5? (Respond with a number only)",
    "What's the factorial of 3? (Respond with a number only)",
    "What's the factorial of 4? (Respond with a number only)",
]
DIGITS = {"type": "regex", "pattern": r"^\d+$", "mode": "fullmatch"}


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_batch_is_one_job_per_prompt(any_server: Server) -> None:
    n = 2
    reply = client(any_server).completions.create(
        model="demo",
        prompt=PROMPTS,
        n=n,
        max_tokens=8,
        temperature=1.0,
        extra_body={"best_of": 4, "verifiers": [DIGITS]},
    )
    natives = (reply.model_extra or {})["bestofk"]
    assert isinstance(natives, list) and len(natives) == len(PROMPTS)
    assert [native["id"] for native in natives] == [f"{reply.id}-{p}" for p in range(3)]
    assert all(native["stats"]["k"] == 4 for native in natives)
    by_index = {choice.index: choice for choice in reply.choices}
    assert len(by_index) == len(reply.choices)
    for p, native in enumerate(natives):
        # The chosen candidate is each prompt's first choice; the rest sit at p * n + i.
        assert by_index[p * n].text == native["text"]
        texts = {c["text"] for c in native["candidates"]}
        indices = [i for i in by_index if i // n == p]
        assert indices and all(by_index[i].text in texts for i in indices)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == sum(nv["usage"]["prompt_tokens"] for nv in natives)
    assert reply.usage.completion_tokens == sum(
        c["tokens"] for nv in natives for c in nv["candidates"]
    )
    assert all(nv["usage"]["prompt_tokens"] > 0 for nv in natives)


def test_a_list_of_one_is_a_single_prompt(server: Server) -> None:
    reply = client(server).completions.create(
        model="demo", prompt=PROMPTS[:1], max_tokens=8, extra_body={"best_of": 2}
    )
    native = (reply.model_extra or {})["bestofk"]
    assert isinstance(native, dict) and native["id"] == reply.id
    assert [c.index for c in reply.choices] == [0]


def test_batch_streams_each_prompt_as_it_is_chosen(server: Server) -> None:
    n = 2
    stream = client(server).completions.create(
        model="demo",
        prompt=PROMPTS[:2],
        n=n,
        max_tokens=8,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"best_of": 3},
    )
    chunks = list(stream)
    texts: dict[int, str] = defaultdict(str)
    finished: dict[int, str | None] = {}
    natives = []
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        assert choice.index not in finished, "text after its finish_reason"
        texts[choice.index] += choice.text
        if choice.finish_reason is not None:
            finished[choice.index] = choice.finish_reason
        if (extra := chunk.model_extra or {}).get("bestofk"):
            natives.append(extra["bestofk"])
    assert set(finished) == set(texts) and {i // n for i in finished} == {0, 1}
    assert len(natives) == 2
    by_prompt = {int(native["id"].rsplit("-", 1)[1]): native for native in natives}
    for p, native in by_prompt.items():
        assert texts[p * n] == native["text"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == sum(nv["usage"]["completion_tokens"] for nv in natives)
    assert usage.prompt_tokens == sum(nv["usage"]["prompt_tokens"] for nv in natives)


def test_an_empty_list_is_refused(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client(server).completions.create(model="demo", prompt=[], max_tokens=4)


@pytest.fixture(scope="module")
def narrow_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with room for one request at a time and batches of at most 3 prompts."""
    env = engine_env(
        BESTOFK_LIMITS__MAX_INFLIGHT="1",
        BESTOFK_LIMITS__MAX_QUEUED="0",
        BESTOFK_LIMITS__MAX_PROMPTS="3",
        BESTOFK_SERVED_MODEL_NAME="demo",
    )
    log = tmp_path_factory.mktemp("logs") / "narrow.log"
    server = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def test_a_batch_holds_one_admission(narrow_server: Server) -> None:
    # One slot, no queue: jobs admitted one by one would refuse all but the first with 429.
    reply = client(narrow_server).completions.create(
        model="demo", prompt=PROMPTS, max_tokens=4, extra_body={"best_of": 2}
    )
    assert {c.index for c in reply.choices} == {0, 1, 2}
    body = {"model": "demo", "prompt": PROMPTS, "max_tokens": 4, "stream": True, "best_of": 2}
    with httpx.stream("POST", narrow_server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        data = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and not any('"error"' in line for line in data)


def test_too_many_prompts_is_a_clear_400(narrow_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(narrow_server).completions.create(
            model="demo", prompt=[*PROMPTS, "one more"], max_tokens=4
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "prompt"
    assert "4 prompts exceed the limit of 3" in error["message"]
