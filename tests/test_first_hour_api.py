"""Issue 15, the server side: what a new user meets in the first hour, each a regression test.

Engine behaviour runs against the real in-process engine and the real remote vLLM server
(``any_server``); what needs no engine runs against a bestofk over
:mod:`bestofk.tooling.fake_backend`, which also counts what reached the backend.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bestofk.service.app import build_engine
from bestofk.service.jobs import JobFactory, JobRequest
from bestofk.service.metrics import Metrics
from bestofk.service.settings import DEMO_MODEL, Settings
from bestofk.tooling.procs import (
    Server,
    engine_env,
    start_bestofk,
)
from tests.conftest import post

PROMPT = "What's the factorial of 5? (Respond with a number only)"
MESSAGES = [{"role": "user", "content": PROMPT}]
KEY = "first-hour-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def client(server: Server, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, **kw)


def error_of(reply: httpx.Response) -> dict[str, Any]:
    """The error envelope's inner object, checked for its shape (code: OpenAI's string)."""
    assert reply.headers["content-type"].startswith("application/json"), reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["code"], str), error
    return error


@pytest.fixture(scope="module")
def keyed(fake_backend: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """bestofk over the fake backend, as an operator deploys it: API keys on, verifier targets not
    opened to clients (the test session opens them for every other server)."""
    log = tmp_path_factory.mktemp("logs") / "keyed.log"
    env = engine_env(
        BESTOFK_API_KEYS=KEY,
        BESTOFK_ALLOW_ANY_VERIFIER_TARGET="0",
        BESTOFK_VERIFIER_TARGETS="http://127.0.0.1:1",
    )
    server = start_bestofk(log, "--backend", fake_backend.url, env=env)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def backend_requests(fake_backend: Server) -> int:
    return len(httpx.get(fake_backend.url + "/control", timeout=5).json()["requests"])


# --- 1. the served name: `demo` for the embedded default, a clean name for a path -----------


def test_embedded_default_serves_as_demo_with_the_readme_profiles() -> None:
    settings = Settings()
    assert build_engine(settings, Metrics()).model_name == "demo"
    assert "digits" in settings.profiles
    jobs = JobFactory(settings, build_engine(settings, Metrics()))
    # The README's `model="demo@digits"`, with no YAML written.
    job = jobs.build("id", JobRequest(prompt=None, model="demo@digits"))
    assert job.profile == "digits" and job.specs[0].type == "regex"


def test_a_model_path_serves_as_its_directory_name(tmp_path: Path) -> None:
    local = tmp_path / "Qwen2.5-0.5B-Instruct"
    local.mkdir()
    assert build_engine(Settings(model=str(local)), Metrics()).model_name == "Qwen2.5-0.5B-Instruct"
    assert (
        build_engine(Settings(model="Qwen/Qwen2.5-0.5B"), Metrics()).model_name
        == "Qwen/Qwen2.5-0.5B"
    )
    named = Settings(model=str(DEMO_MODEL), served_model_name="mine")
    assert build_engine(named, Metrics()).model_name == "mine"
    # Profiles the operator configures are the whole set, for the demo too.
    assert Settings(profiles={}).profiles == {}


def test_served_model_name_names_a_remote_engine_too(fake_backend: Server) -> None:
    engine = build_engine(
        Settings(backends=[fake_backend.url], served_model_name="public"), Metrics()
    )
    assert engine.model_name == "public"


# --- 2. greedy sampling, and every sampling value the engine would refuse ---------------------


def test_temperature_zero_samples_one_candidate_on_both_engines(any_server: Server) -> None:
    with httpx.Client(base_url=any_server.url, timeout=120) as http:
        body = {"model": "demo", "messages": MESSAGES, "temperature": 0, "max_tokens": 8}
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        stats = reply.json()["bestofk"]["stats"]
        assert stats["k"] == 1 and stats["k_requested"] == 8 and stats["generated"] == 1
        native = http.post("/generate", json={"prompt": PROMPT, "k": 4, "sampling": {
            "temperature": 0, "max_tokens": 8}})  # fmt: skip
        assert native.status_code == 200, native.text
        assert native.json()["stats"]["k"] == 1 and native.json()["stats"]["k_requested"] == 4
        # The same keep-alive connection still serves (a 500 used to reset it).
        assert http.get("/v1/models").status_code == 200


BAD_SAMPLING = [
    ("empty stop string", {"stop": [""]}, "stop"),
    ("too many stop strings", {"stop": [str(i) for i in range(17)]}, "stop"),
    ("logit_bias out of range", {"logit_bias": {"5": 1000}}, "logit_bias.5"),
    ("logit_bias negative id", {"logit_bias": {"-1": 1}}, "logit_bias"),
    ("logit_bias id past the vocabulary", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("top_logprobs over 20", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("top_logprobs without logprobs", {"top_logprobs": 2}, "top_logprobs"),
    ("negative seed", {"seed": -1}, "seed"),
    ("seed past 64 bits", {"seed": 2**64}, "seed"),
    ("min_tokens over max_tokens", {"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
    ("top_p 0", {"top_p": 0}, "top_p"),
    ("penalty below -2", {"presence_penalty": -2.5}, "presence_penalty"),
    ("temperature over 2", {"temperature": 2.5}, "temperature"),
    ("n over max_k", {"n": 17}, "n"),
    ("best_of over max_k", {"best_of": 17}, "k"),
    ("max_tokens over the limit", {"max_tokens": 10**9}, "max_tokens"),
    ("max_tokens over max_model_len", {"max_tokens": 1000}, "max_tokens"),
    ("top_k below -1", {"top_k": -5}, "top_k"),
    ("min_p over 1", {"min_p": 2}, "min_p"),
    ("repetition_penalty 0", {"repetition_penalty": 0}, "repetition_penalty"),
    (
        "tool_choice naming no tool",
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
    ),
    ("tool_choice without tools", {"tool_choice": "auto"}, "tool_choice"),
]


@pytest.mark.parametrize(
    ("fields", "param"), [(f, p) for _, f, p in BAD_SAMPLING], ids=[i for i, _, _ in BAD_SAMPLING]
)
def test_sampling_the_engine_refuses_is_a_400(
    any_server: Server, fields: dict[str, Any], param: str | None
) -> None:
    body = {"model": "demo", "messages": MESSAGES, "max_tokens": 8, **fields}
    reply = post(any_server, "/v1/chat/completions", body)
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_vllm_sampling_extensions_are_honoured(any_server: Server) -> None:
    # top_k=1 leaves one token to sample at each step: every candidate is the same text.
    body = {"prompt": PROMPT, "k": 4, "sampling": {"temperature": 1.0, "max_tokens": 8,
            "top_k": 1, "min_p": 0.1, "repetition_penalty": 1.1}}  # fmt: skip
    reply = post(any_server, "/generate", body)
    assert reply.status_code == 200, reply.text
    assert len({c["text"] for c in reply.json()["candidates"]}) == 1


def test_nan_temperature_is_a_400(server: Server) -> None:
    content = (
        '{"model": "demo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    )
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400 and error_of(reply)["param"] == "temperature"


# --- 4. the default K is explicit: settings, /v1/models, stats.k ------------------------------


def test_default_k_is_visible_and_n_raises_it(server: Server) -> None:
    cards = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
    assert cards["demo"]["default_k"] == 8 and cards["demo@digits"]["default_k"] == 4

    def k_of(**fields: Any) -> int:
        body = {"model": "demo", "messages": MESSAGES, "max_tokens": 4, **fields}
        reply = post(server, "/v1/chat/completions", body)
        assert reply.status_code == 200, reply.text
        stats: dict[str, int] = reply.json()["bestofk"]["stats"]
        assert stats["k"] == stats["k_requested"]
        return stats["k"]

    assert k_of() == 8
    assert k_of(n=3) == 8  # K = max(n, default K)
    assert k_of(n=10) == 10
    assert k_of(model="demo@digits", n=6) == 6  # a profile's default K yields to n as well
    assert k_of(n=2, best_of=3) == 3  # an explicit best_of is K


def test_k_rules() -> None:
    jobs = JobFactory(
        Settings(default_k=6, limits={"max_k": 10}, profiles={"p": {"k": 3}}),
        build_engine(Settings(), Metrics()),
    )

    def job(**fields: Any) -> tuple[int, int | None]:
        built = jobs.build("id", JobRequest(prompt=None, **fields))
        return built.k, built.k_requested

    assert job() == (6, 6) and job(n=8) == (8, 8) and job(profile="p", n=2) == (3, 3)
    assert job(k=2, n=1) == (2, 2)
    assert job(sampling={"temperature": 0}) == (1, 6)  # greedy: one candidate
    assert job(given=["a", "b"]) == (2, 2)
    assert jobs.default_k() == 6 and jobs.default_k("p") == 3


# --- 7. a verifier target the server does not allow is refused before generating -------------


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "judge", "endpoint": "http://127.0.0.1:9/v1", "model": "m"},
        {"type": "reward_model", "model": "/models/some-reward-model"},
    ],
    ids=["judge endpoint", "reward model"],
)
def test_unallowed_verifier_target_is_refused_before_generating(
    keyed: Server, fake_backend: Server, spec: dict[str, Any]
) -> None:
    before = backend_requests(fake_backend)
    body = {"prompt": PROMPT, "k": 3, "verifiers": [spec]}
    reply = httpx.post(keyed.url + "/generate", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert "BESTOFK_VERIFIER_TARGETS" in error["message"] and error["param"] == "verifiers"
    assert backend_requests(fake_backend) == before  # nothing was generated


# --- 9. error codes: OpenAI's string form, everywhere -----------------------------------------


def test_error_codes_are_strings_and_401_names_its_scheme(keyed: Server) -> None:
    unauthorised = httpx.post(keyed.url + "/generate", json={"prompt": "x"}, timeout=10)
    assert unauthorised.status_code == 401
    assert unauthorised.headers["www-authenticate"] == "Bearer"
    assert error_of(unauthorised)["code"] == "invalid_api_key"
    replies = {
        400: httpx.post(keyed.url + "/generate", json={"k": 1}, headers=AUTH, timeout=10),
        404: httpx.post(
            keyed.url + "/v1/completions",
            json={"model": "nope", "prompt": "x"},
            headers=AUTH,
            timeout=10,
        ),
        405: httpx.delete(keyed.url + "/generate", headers=AUTH, timeout=10),
    }
    for status, reply in replies.items():
        assert reply.status_code == status, reply.text
    assert error_of(replies[404])["code"] == "model_not_found"
    assert error_of(replies[405])["code"] == "method_not_allowed"
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert raised.value.code == "invalid_api_key"


# --- Also -------------------------------------------------------------------------------------


def test_verify_generates_nothing(keyed: Server) -> None:
    body = {"prompt": PROMPT, "candidates": ["120", "24", "121"]}
    reply = httpx.post(keyed.url + "/verify", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 200, reply.text
    stats = reply.json()["stats"]
    assert stats["k"] == 3 and stats["generated"] == 0


def test_tool_choice_none_without_tools_is_accepted(keyed: Server) -> None:
    reply = client(keyed).chat.completions.create(
        model=client(keyed).models.list().data[0].id,
        messages=MESSAGES,
        tool_choice="none",
        extra_body={"best_of": 2},
    )
    assert reply.choices[0].message.content


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streamed_logprobs_travel_with_their_deltas(server: Server, endpoint: str) -> None:
    chat = endpoint == "chat"
    if chat:
        chunks = list(
            client(server).chat.completions.create(
                model="demo", messages=MESSAGES, max_tokens=16, temperature=1.0, logprobs=True,
                top_logprobs=1, stream=True, extra_body={"best_of": 2},
            )
        )  # fmt: skip
    else:
        chunks = list(
            client(server).completions.create(
                model="demo", prompt=PROMPT, max_tokens=16, temperature=1.0, logprobs=1,
                stream=True, extra_body={"best_of": 2},
            )
        )  # fmt: skip
    content = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason is None]
    final = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert content and len(final) == 1
    assert final[0].logprobs is None  # nothing held back for the end
    text, shown = "", ""
    for choice in content:
        assert choice.logprobs is not None, choice
        if chat:
            piece = choice.delta.content or ""  # type: ignore[union-attr]
            tokens = [t.token for t in choice.logprobs.content or []]  # type: ignore[union-attr]
        else:
            piece = choice.text  # type: ignore[union-attr]
            tokens = choice.logprobs.tokens or []  # type: ignore[union-attr]
            assert (choice.logprobs.text_offset or [len(text)])[0] == len(text)  # type: ignore[union-attr]
        text += piece
        shown += "".join(tokens)
    assert shown == text


def test_embedded_default_answers_the_readme_and_stops_in_order(tmp_path: Path) -> None:
    """`bestofk serve` with no arguments, as `make serve` runs it: the README's OpenAI
    example works verbatim (`model="demo"`, then `demo@digits`); stopped as an orchestrator
    stops it (SIGTERM to the server), the engine shuts down in order, not force-killed
    mid-teardown with its shared memory left behind."""
    log = tmp_path / "serve.log"
    env = engine_env()
    env.pop("BESTOFK_CONFIG", None)
    server = start_bestofk(log, env=env)
    try:
        server.wait_ready(300)
        readme = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reply = readme.chat.completions.create(
            model="demo",
            messages=MESSAGES,
            extra_body={
                "best_of": 8,
                "verifiers": [
                    {"type": "regex", "pattern": "^\\d+$", "mode": "fullmatch", "required": True},
                    {"type": "exact", "reference": "120"},
                ],
                "early_exit": {"min_score": 1.0},
            },
        )
        assert reply.model == "demo"
        profiled = readme.chat.completions.create(model="demo@digits", messages=MESSAGES)
        assert (profiled.model_extra or {})["bestofk"]["candidates"][0]["verdicts"]
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.stop()
            raise
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "force killing" not in text, text[-3000:]
