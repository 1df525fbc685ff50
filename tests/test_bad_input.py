"""Bad input gets a 4xx error in our envelope, naming the field; the server stays healthy."""

from __future__ import annotations

import httpx
import pydantic
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.testclient import TestClient

from bestofk.service.routes.common import post_json
from bestofk.tooling.procs import Server

CASES = [
    ("no prompt", {"k": 2}, 400, "prompt"),
    ("both prompt and messages", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
     400, "prompt"),
    ("k=0", {"prompt": "x", "k": 0}, 400, "k"),
    ("k over the limit", {"prompt": "x", "k": 17}, 400, "k"),
    ("unknown verifier", {"prompt": "x", "verifiers": [{"type": "nope"}]}, 400, "nope"),
    ("invalid regex", {"prompt": "x", "verifiers": [{"type": "regex", "pattern": "(["}]},
     400, "pattern"),
    ("wrong type for k", {"prompt": "x", "k": "many"}, 400, "k"),
    ("wrong type for sampling", {"prompt": "x", "sampling": {"temperature": "hot"}},
     400, "temperature"),
    ("unknown field", {"prompt": "x", "kk": 3}, 400, "kk"),
    ("verifier field typo", {"prompt": "x", "verifiers": [{"type": "exact", "referenc": "1"}]},
     400, "referenc"),
    ("unknown profile", {"prompt": "x", "profile": "missing"}, 404, "profile"),
    ("unknown model", {"prompt": "x", "model": "gpt-17"}, 404, "model"),
    ("max_tokens over the limit", {"prompt": "x", "sampling": {"max_tokens": 10**6}},
     400, "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "status", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_generate_request(
    server: Server, name: str, body: dict[str, object], status: int, needle: str
) -> None:
    reply = httpx.post(server.url + "/generate", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert needle in error["message"], error
    assert error["type"] and "message" in error and "param" in error
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_malformed_json(server: Server) -> None:
    reply = httpx.post(
        server.url + "/generate",
        content=b'{"prompt": "x",',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert reply.status_code == 400
    assert "JSON" in reply.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/generate", "/verify"])
@pytest.mark.parametrize(
    ("raw", "needle"),
    [(b"", "Field required"), (b'{"prompt": "x",', "not valid JSON"), (b"[1]", "object")],
    ids=["empty", "cut short", "not an object"],
)
def test_a_body_that_is_no_request_object(
    server: Server, path: str, raw: bytes, needle: str
) -> None:
    """The native routes validate the body's bytes straight into their model: what cannot be
    one is still a 400 in the envelope, not a 422 or a 500."""
    reply = httpx.post(
        server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=10
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error", error
    assert error["param"] is None, error


DEEP = "[" * 10_000 + "]" * 10_000
"""Past the interpreter's recursion limit, where json.loads gives up (FastAPI parses the OpenAI
and Anthropic bodies with it), not only past pydantic's parser's depth (the native routes')."""


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/generate", '{"prompt": "x", "x": ' + DEEP + "}"),
        ("/v1/completions", '{"model": "demo", "prompt": "x", "x": ' + DEEP + "}"),
        ("/v1/chat/completions",
         '{"model": "demo", "messages": [{"role": "user", "content": ' + DEEP + "}]}"),
        ("/v1/messages",
         '{"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": '
         + DEEP + "}]}"),
    ],
    ids=["native", "completions", "chat", "messages"],
)  # fmt: skip
def test_a_body_nested_too_deeply_says_so(server: Server, path: str, raw: str) -> None:
    reply = httpx.post(
        server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=10
    )
    assert reply.status_code == 400, reply.text
    body = reply.json()
    error = body["error"]
    assert "the body is nested too deeply" in error["message"], error
    assert error["type"] == "invalid_request_error", error
    if path == "/v1/messages":
        assert body["type"] == "error", body  # Anthropic's envelope
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
JSON = ["application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/generate", b'{"prompt": "x", "kk": 1}'), ("/verify", b'{"candidates": ["1"], "kk": 1}')],
    ids=["generate", "verify"],
)
def test_a_body_sent_as_something_else_than_json(server: Server, path: str, body: bytes) -> None:
    """FastAPI reads a body as JSON only when its content type says JSON: the native routes
    refuse the rest as FastAPI did, with a 400 in the envelope that says what to send. Without
    a content type the body is read as JSON (``body`` is wrong at ``kk``, and the 400 names it)."""
    for content_type in NOT_JSON:
        reply = httpx.post(
            server.url + path, content=body, headers={"content-type": content_type}, timeout=10
        )
        assert reply.status_code == 400, (content_type, reply.text)
        assert reply.json()["error"] == {
            "message": "the body must be a JSON object sent with content-type: "
            f"application/json (this one came as {content_type})",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_value",
        }, content_type
    for headers in [{"content-type": c} for c in JSON] + [{}]:
        reply = httpx.post(server.url + path, content=body, headers=headers, timeout=10)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "kk", headers


class Body(pydantic.BaseModel):
    """One required field: the model both routes of the parity test read."""

    prompt: str


async def ours(body: Body, request: Request) -> Response:
    return Response(body.prompt)


async def fastapis(body: Body) -> Response:  # FastAPI's own body handling, as the routes had
    return Response(body.prompt)


@pytest.mark.parametrize("content_type", [*NOT_JSON, *JSON, "application/json", "text/json"])
@pytest.mark.parametrize("raw", [b'{"prompt": "x"}', b""], ids=["body", "empty"])
def test_json_body_route_reads_a_content_type_as_fastapi_does(
    content_type: str, raw: bytes
) -> None:
    """What FastAPI's own body handling answers, ``JsonBodyRoute`` answers, error and all."""
    router = APIRouter()
    post_json(router, "/ours")(ours)
    router.add_api_route("/fastapi", fastapis, methods=["POST"])
    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    mine, theirs = (
        client.post(path, content=raw, headers={"content-type": content_type})
        for path in ("/ours", "/fastapi")
    )
    assert (mine.status_code, mine.text) == (theirs.status_code, theirs.text)


def test_body_too_large(server: Server) -> None:
    reply = httpx.post(
        server.url + "/verify",
        json={"candidates": ["x" * (5 * 1024 * 1024)]},
        timeout=30,
    )
    assert reply.status_code == 413
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_verify_needs_candidates(server: Server) -> None:
    reply = httpx.post(server.url + "/verify", json={"candidates": []}, timeout=10)
    assert reply.status_code == 400
    assert "candidates" in reply.json()["error"]["message"]
