"""``POST /v1/messages`` through the official ``anthropic`` SDK: messages, system prompts,
stop sequences, streaming with Anthropic's event sequence, its error envelope and x-api-key."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from bestofk.tooling.procs import Server, engine_env, start_bestofk

PROMPT = "What's the factorial of 5? (Respond with a number only)"
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
DIGITS = {"type": "regex", "pattern": r"^\d+$", "mode": "fullmatch"}
WIRE_EVENTS = {
    "message_start", "ping", "content_block_start", "content_block_delta",
    "content_block_stop", "message_delta", "message_stop",
}  # fmt: skip


@pytest.fixture
def client() -> Iterator[Callable[..., anthropic.Anthropic]]:
    """Makes SDK clients and closes them after the test: a client caught in an exception's
    traceback is freed by the garbage collector, whose order could close its sockets last
    (a ResourceWarning in whichever test runs then)."""
    made: list[anthropic.Anthropic] = []

    def make(server: Server, api_key: str = "unused", **kw: Any) -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, **kw))
        return made[-1]

    yield make
    for sdk in made:
        sdk.close()


def test_message_with_verifiers_in_extra_body(
    any_server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    raw = client(any_server).messages.with_raw_response.create(
        model="demo",
        max_tokens=16,
        messages=MESSAGES,
        # The SDK (2.x) no longer declares temperature: it travels as an extra field.
        extra_body={
            "best_of": 4,
            "temperature": 1.0,
            "verifiers": [DIGITS, {"type": "exact", "reference": "120"}],
        },
    )
    reply = raw.parse()
    native = (reply.model_extra or {})["bestofk"]
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "demo"
    assert reply.id == raw.headers["x-request-id"] == native["id"]
    assert [block.type for block in reply.content] == ["text"]
    assert reply.content[0].type == "text" and reply.content[0].text == native["text"]
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert native["stats"]["k"] == 4
    assert [v["verifier"] for v in native["candidates"][0]["verdicts"]] == ["regex", "exact"]
    assert reply.usage.output_tokens == sum(c["tokens"] for c in native["candidates"])
    assert reply.usage.input_tokens == native["usage"]["prompt_tokens"] > 0


def test_system_prompt_and_turns_reach_the_template(
    server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    def prompt_tokens(**kw: Any) -> int:
        reply = client(server).messages.create(model="demo", max_tokens=4, **kw)
        return int(reply.usage.input_tokens)

    plain = prompt_tokens(messages=MESSAGES)
    with_system = prompt_tokens(messages=MESSAGES, system="Answer tersely.")
    with_blocks = prompt_tokens(
        messages=MESSAGES, system=[{"type": "text", "text": "Answer tersely."}]
    )
    turns = prompt_tokens(
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": [{"type": "text", "text": "120"}]},
            {"role": "user", "content": PROMPT},
        ]
    )
    assert with_system == with_blocks > plain
    assert turns > plain


def test_stop_sequences_end_every_candidate(
    server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    reply = client(server).messages.create(
        model="demo",
        max_tokens=16,
        messages=MESSAGES,
        stop_sequences=["2"],
        extra_body={"best_of": 6, "temperature": 1.0},
    )
    candidates = (reply.model_extra or {})["bestofk"]["candidates"]
    assert len(candidates) == 6 and not any("2" in c["text"] for c in candidates)


def test_stop_sequence_is_reported(
    any_server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    # Most of the demo's answers to 5! start with 1 or 2 ("120", "24"): over six requests
    # some stop there, and say which sequence stopped them.
    stops = ["1", "2"]
    replies = [
        client(any_server).messages.create(
            model="demo",
            max_tokens=8,
            messages=MESSAGES,
            stop_sequences=stops,
            extra_body={"best_of": 1, "temperature": 1.0},
        )
        for _ in range(6)
    ]
    for reply in replies:
        assert (reply.stop_reason == "stop_sequence") == (reply.stop_sequence is not None)
    assert {r.stop_sequence for r in replies} - {None} <= set(stops)
    assert any(r.stop_reason == "stop_sequence" for r in replies)


def test_profile_through_model_name(
    server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    reply = client(server).messages.create(model="demo@digits", max_tokens=8, messages=MESSAGES)
    native = (reply.model_extra or {})["bestofk"]
    assert native["stats"]["k"] == 4  # the digits profile's K in tests/data/config.yaml
    assert native["candidates"][0]["verdicts"][0]["verifier"] == "regex"


def test_stream_follows_anthropics_event_sequence(
    any_server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    with client(any_server).messages.stream(
        model="demo", max_tokens=16, messages=MESSAGES, extra_body={"best_of": 3}
    ) as stream:
        # The SDK interleaves events of its own (``text``, ``input_json``): keep the wire's.
        events = [e for e in stream if e.type in WIRE_EVENTS]
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta"
    blocks = [i for i, kind in enumerate(kinds) if kind == "content_block_start"]
    assert len(blocks) == 1
    assert kinds[blocks[0] + 1 : blocks[0] + 3] == ["content_block_delta", "content_block_stop"]
    delta = events[-2]
    native = (delta.model_extra or {})["bestofk"]
    assert final.content[0].type == "text" and final.content[0].text == native["text"]
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens == native["usage"]["completion_tokens"]
    assert final.usage.input_tokens == native["usage"]["prompt_tokens"] > 0


def test_stream_wire_format(server: Server) -> None:
    body = {"model": "demo", "max_tokens": 16, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    # Each event is an "event:" line naming the type its data carries.
    assert len(lines) % 2 == 0
    for name, data in zip(lines[::2], lines[1::2], strict=True):
        assert name.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == name[7:]
    names = [line[7:] for line in lines[::2]]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert set(names) <= WIRE_EVENTS


def test_errors_use_anthropics_envelope(
    server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(server).messages.create(
            model="demo", max_tokens=8, messages=MESSAGES, extra_body={"best_of": 1000}
        )
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "k=1000 exceeds the limit of 16"},
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(server).messages.create(model="claude-9", max_tokens=8, messages=MESSAGES)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
    refused = {
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
            }
        ],
    }
    for field, value in refused.items():
        body = {"model": "demo", "max_tokens": 4096, "messages": MESSAGES, field: value}
        r = httpx.post(server.url + "/v1/messages", json=body, timeout=30)
        assert r.status_code == 400, r.text
        error = r.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "not supported" in error["error"]["message"]
    # The framework's own errors too: a body that is no JSON object, a missing field.
    r = httpx.post(server.url + "/v1/messages", content=b"[1]", timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = httpx.post(server.url + "/v1/messages", json={"model": "demo", "messages": MESSAGES})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]


def test_too_large_is_request_too_large(
    server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        client(server).messages.create(
            model="demo", max_tokens=4, messages=[{"role": "user", "content": "x" * 40_000}]
        )
    assert info.value.status_code == 413
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "request_too_large"


@pytest.fixture(scope="module")
def keyed_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with API keys, over the remote engine."""
    env = engine_env(BESTOFK_API_KEYS="key-one,key-two", BESTOFK_SERVED_MODEL_NAME="demo")
    log = tmp_path_factory.mktemp("logs") / "keyed.log"
    server = start_bestofk(log, "--backend", vllm_backend.url, env=env)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def test_x_api_key_beside_bearer(
    keyed_server: Server, client: Callable[..., anthropic.Anthropic]
) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(keyed_server, api_key="wrong").messages.create(
            model="demo", max_tokens=4, messages=MESSAGES
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "authentication_error"
    reply = client(keyed_server, api_key="key-two").messages.create(
        model="demo", max_tokens=4, messages=MESSAGES
    )
    assert reply.content
    # An Anthropic SDK given a token sends it as Bearer; both are the same keys.
    bearer = client(keyed_server, api_key=None, auth_token="key-one")
    assert bearer.messages.create(model="demo", max_tokens=4, messages=MESSAGES).content
    # x-api-key opens the OpenAI routes too: one set of keys, either header.
    r = httpx.post(
        keyed_server.url + "/v1/completions",
        json={"model": "demo", "prompt": PROMPT, "max_tokens": 4},
        headers={"x-api-key": "key-one"},
        timeout=60,
    )
    assert r.status_code == 200
