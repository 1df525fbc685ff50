"""The OpenAI-compatible API through the official ``openai`` client, sync and async."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bestofk.tooling.procs import Server, engine_env, free_port, start_bestofk

PROMPT = "What's the factorial of 5? (Respond with a number only)"
MESSAGES = [{"role": "user", "content": PROMPT}]
DIGITS = {"type": "regex", "pattern": r"^\d+$", "mode": "fullmatch"}


def client(server: Server, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kw)


def test_chat_with_verifiers_in_extra_body(any_server: Server) -> None:
    raw = client(any_server).chat.completions.with_raw_response.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=24,
        temperature=1.0,
        extra_body={"best_of": 6, "verifiers": [DIGITS, {"type": "exact", "reference": "120"}]},
    )
    assert raw.headers["x-request-id"].startswith("chatcmpl-")
    reply = raw.parse()
    extra = reply.model_extra or {}
    native = extra["bestofk"]
    assert reply.object == "chat.completion" and reply.id == raw.headers["x-request-id"]
    assert len(reply.choices) == 1
    assert reply.choices[0].message.content == native["text"]
    assert reply.choices[0].message.role == "assistant"
    assert native["stats"]["k"] == 6 and len(native["candidates"]) == 6
    assert [v["verifier"] for v in native["candidates"][0]["verdicts"]] == ["regex", "exact"]
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(c["tokens"] for c in native["candidates"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completions(server: Server) -> None:
    reply = client(server).completions.create(
        model="demo", prompt=PROMPT, max_tokens=24, extra_body={"best_of": 4}
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text == (reply.model_extra or {})["bestofk"]["text"]
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_n_returns_top_distinct_candidates(server: Server) -> None:
    reply = client(server).chat.completions.create(
        model="demo",
        messages=MESSAGES,
        n=3,
        max_tokens=24,
        temperature=1.0,
        extra_body={"best_of": 8, "verifiers": [DIGITS]},
    )
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len(set(texts)) == len(texts)
    native = (reply.model_extra or {})["bestofk"]
    assert texts[0] == native["text"]
    score = {c["text"]: c["score"] for c in native["candidates"]}
    assert score[texts[0]] >= score[texts[1]] >= score[texts[2]]


def test_profile_through_model_name(server: Server) -> None:
    reply = client(server).chat.completions.create(
        model="demo@digits",
        messages=MESSAGES,
        max_tokens=16,
    )
    native = (reply.model_extra or {})["bestofk"]
    assert native["stats"]["k"] == 4
    assert native["candidates"][0]["verdicts"][0]["verifier"] == "regex"
    models = [m.id for m in client(server).models.list()]
    assert "demo" in models and "demo@digits" in models


def test_chat_logprobs_describe_the_chosen_candidate(any_server: Server) -> None:
    reply = client(any_server).chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=16,
        logprobs=True,
        top_logprobs=2,
        extra_body={"best_of": 3},
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    native = (reply.model_extra or {})["bestofk"]
    chosen = next(c for c in native["candidates"] if c["index"] == native["index"])
    # Every generated token but a final end-of-sequence, which the text does not show.
    assert len(choice.logprobs.content) in (chosen["tokens"], chosen["tokens"] - 1)
    if "\ufffd" not in (choice.message.content or ""):  # split multi-byte characters decode apart
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for t in choice.logprobs.content:
        assert t.logprob <= 0 and len(t.top_logprobs) <= 2


def test_completion_logprobs(server: Server) -> None:
    reply = client(server).completions.create(
        model="demo", prompt=PROMPT, max_tokens=16, logprobs=1, extra_body={"best_of": 2}
    )
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs
    if "\ufffd" not in reply.choices[0].text:
        assert "".join(lp.tokens) == reply.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset or [])


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}},
                    "required": ["answer"],
                },
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
def test_response_format_constrains_and_verifies(
    server: Server, response_format: dict[str, object]
) -> None:
    reply = client(server).chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=48,
        response_format=response_format,
        extra_body={"best_of": 3},
    )
    native = (reply.model_extra or {})["bestofk"]
    verdicts = native["candidates"][0]["verdicts"]
    assert verdicts[-1]["verifier"] == "json_schema"
    content = reply.choices[0].message.content or ""
    if native["passed"]:
        json.loads(content)
    else:  # the verifier says why; the chosen one is the best of what there was
        assert all(not c["verdicts"][-1]["passed"] for c in native["candidates"])


def test_chat_stream_with_usage(any_server: Server) -> None:
    stream = client(any_server).chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"best_of": 4, "verifiers": [DIGITS]},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    native = next(c.model_extra["bestofk"] for c in chunks if (c.model_extra or {}).get("bestofk"))
    assert content == native["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == native["usage"]["completion_tokens"]


def test_completion_stream(server: Server) -> None:
    stream = client(server).completions.create(
        model="demo", prompt=PROMPT, max_tokens=24, stream=True, extra_body={"best_of": 2}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_sends_keepalive_comments_then_done(server: Server) -> None:
    lines: list[str] = []
    body = {
        "model": "demo",
        "messages": MESSAGES,
        "max_tokens": 16,
        "stream": True,
        "best_of": 2,
        "verifiers": [{"type": "regex", "pattern": "^(a|a)*$"}],
    }
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith(("data: ", ": ")) for line in lines)


async def test_async_client_chat_and_stream(server: Server) -> None:
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    async with aclient:
        replies = await asyncio.gather(
            *(
                aclient.chat.completions.create(
                    model="demo",
                    messages=MESSAGES,
                    max_tokens=16,
                    extra_body={"best_of": 2},
                )
                for _ in range(4)
            )
        )
        assert all(r.choices[0].message.content is not None for r in replies)
        stream = await aclient.chat.completions.create(
            model="demo",
            messages=MESSAGES,
            max_tokens=16,
            stream=True,
            extra_body={"best_of": 2},
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces)


def test_multi_turn_chat(server: Server) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "24"},
        {"role": "user", "content": PROMPT},
    ]
    reply = client(server).chat.completions.create(
        model="demo",
        messages=messages,
        max_tokens=16,
    )
    native = (reply.model_extra or {})["bestofk"]
    single = client(server).chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=16,
    )
    single_native = (single.model_extra or {})["bestofk"]
    assert native["usage"]["prompt_tokens"] > single_native["usage"]["prompt_tokens"]


# Error statuses, each raising the client exception an OpenAI user would catch.


def test_bad_request(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model="demo",
            messages=MESSAGES,
            extra_body={"best_of": 1000},
        )
    assert "k=1000" in str(info.value)
    with pytest.raises(openai.BadRequestError, match="pattern"):
        client(server).chat.completions.create(
            model="demo",
            messages=MESSAGES,
            extra_body={"verifiers": [{"type": "regex", "pattern": "(["}]},
        )
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client(server).chat.completions.create(
            model="demo",
            messages=MESSAGES,
            n=5,
            extra_body={"best_of": 2},
        )


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompt": [1, 2, 3]}, "prompt as token ids is not supported"),
        ({"prompt": [[1, 2], [3]]}, "prompt as token ids is not supported"),
        ({"prompt": "x", "echo": True}, "echo is not supported"),
        ({"prompt": "x", "suffix": "y"}, "suffix is not supported"),
    ],
    ids=["token ids", "batch of token ids", "echo", "suffix"],
)
def test_refused_completion_fields_say_why(
    server: Server, fields: dict[str, Any], needle: str
) -> None:
    """README's "Request fields still refused": a 400 that says which field and why (a token-id
    prompt used to read "prompt.str: Input should be a valid string")."""
    with pytest.raises(openai.BadRequestError, match=needle):
        client(server).completions.create(model="demo", max_tokens=4, **fields)


def test_unknown_model_and_profile(server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        client(server).chat.completions.create(model="gpt-9", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError, match="nope"):
        client(server).chat.completions.create(model="demo@nope", messages=MESSAGES)


def test_too_large(server: Server) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(server).completions.create(model="demo", prompt="x" * 40_000)
    assert info.value.status_code == 413


@pytest.fixture(scope="module")
def guarded_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with API keys and room for one request at a time, over the remote engine."""
    env = engine_env(
        BESTOFK_API_KEYS="key-one,key-two",
        BESTOFK_LIMITS__MAX_INFLIGHT="1",
        BESTOFK_LIMITS__MAX_QUEUED="0",
        BESTOFK_SERVED_MODEL_NAME="demo",
    )
    log = tmp_path_factory.mktemp("logs") / "guarded.log"
    server = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def test_api_keys(guarded_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(guarded_server).chat.completions.create(model="demo", messages=MESSAGES)
    ok = openai.OpenAI(base_url=guarded_server.url + "/v1", api_key="key-two", max_retries=0)
    assert ok.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=8)
    assert httpx.get(guarded_server.url + "/health").status_code == 200
    assert httpx.get(guarded_server.url + "/metrics").status_code == 200
    assert httpx.post(guarded_server.url + "/generate", json={"prompt": "x"}).status_code == 401


async def test_rate_limited_when_at_capacity(guarded_server: Server) -> None:
    aclient = openai.AsyncOpenAI(
        base_url=guarded_server.url + "/v1", api_key="key-one", max_retries=0
    )
    async with aclient:
        slow = asyncio.ensure_future(
            aclient.completions.create(
                model="demo",
                prompt=PROMPT,
                max_tokens=400,
                extra_body={"best_of": 16, "min_tokens": 400},
                stop=None,
                temperature=1.0,
            )
        )
        await asyncio.sleep(0.3)
        with pytest.raises(openai.RateLimitError) as info:
            await aclient.completions.create(model="demo", prompt=PROMPT, max_tokens=4)
        assert int(info.value.response.headers["retry-after"]) >= 1
        await slow


def test_backend_down_is_a_server_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_bestofk(tmp_path / "dead.log", "--backend", dead)
    try:
        server.wait_ready(30, path="/v1/models")
        assert httpx.get(server.url + "/health").status_code == 503
        with pytest.raises(openai.APIStatusError) as info:
            client(server).chat.completions.create(model="unknown", messages=MESSAGES)
        assert info.value.status_code == 503
        assert "retry-after" in info.value.response.headers
    finally:
        server.stop()


def test_vllm_serving_benchmark_has_no_failed_requests(server: Server) -> None:
    from bestofk.tooling.bench.vllm_serving import chat_args, run
    from tests.conftest import model_path

    result = run(
        chat_args(server.url, model_path(), num_prompts=12, concurrency=4,
                  extra_body={"best_of": 4})
    )  # fmt: skip
    assert result["completed"] == 12, result
    assert result["failed"] == 0, result
