"""The trace pages (``/ui``) in a real browser: Debian's chromium driven by Playwright, over the
session's real server and the demo model, with real requests behind every page.

Screenshots of every page land in pytest's temporary directory (``ui-screenshots``). The pure
parts (reading record files backwards, the ring, the explanation of a choice) are tested
without a browser at the end.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bestofk.service import cli
from bestofk.service import server as server_process
from bestofk.service.app import create_app
from bestofk.service.history import History
from bestofk.service.middleware import UI_COOKIE, ui_token
from bestofk.service.records.format import (
    CandidateRecord,
    Record,
    SelectionRecord,
    StatsRecord,
    VerdictRecord,
)
from bestofk.service.records.reader import complete_lines, complete_lines_reversed, read_records
from bestofk.service.routes.common import trace_link
from bestofk.service.settings import Settings
from bestofk.service.ui.routes import _next
from bestofk.service.ui.trace import trace
from bestofk.tooling.procs import Server, engine_env, start_bestofk
from bestofk.tooling.records import stats
from tests.conftest import CONFIG, post

pytestmark = pytest.mark.vllm

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TASKS = (Path(__file__).parent.parent / "demo" / "tasks.jsonl").read_text().splitlines()
PALINDROME = json.loads(next(line for line in TASKS if '"code-is_palindrome-1"' in line))
HOSTILE = "<script>window.pwned=1</script>"
HOSTILE_IMG = '<img src=x onerror="window.pwned=2">'
SECRET = "sk-live-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright; a missing one fails with how to install it."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "chromium is not installed: `apt-get install -y chromium fonts-liberation` "
            "(make installs the Makefile's DEBIAN_PACKAGES); the trace pages are tested in it"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install playwright` (the test extra)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        context.close()


def _trace_path(response: httpx.Response) -> str:
    link = response.headers["link"]
    match = re.fullmatch(r'<(/ui/requests/[^>]+)>; rel="describedby"', link)
    assert match, link
    return match.group(1)


@pytest.fixture(scope="module")
def best_of_8(server: Server) -> httpx.Response:
    """A best-of-8 code request with unit tests and the demo model as judge."""
    body = {
        "prompt": PALINDROME["prompt"],
        "k": 8,
        "sampling": {"temperature": 1.0, "max_tokens": 96},
        "verifiers": [*PALINDROME["verifiers"], {"type": "judge"}],
    }
    response = post(server, "/generate", body)
    assert response.status_code == 200, response.text
    return response


def test_the_request_page_shows_every_candidate_and_the_winner(
    server: Server, best_of_8: httpx.Response, page: Any, shots: Path
) -> None:
    data = best_of_8.json()
    page.goto(server.url + _trace_path(best_of_8))
    page.screenshot(path=str(shots / "request.png"), full_page=True)
    cards = page.locator("section.card")
    assert cards.count() == 8
    winner = page.locator("section.card.winner")
    assert winner.count() == 1
    assert winner.get_attribute("data-index") == str(data["index"])
    assert winner.locator("pre.candidate-text").text_content() == data["text"]
    # Every candidate's verdicts, with the server's own scores and details.
    for candidate in data["candidates"]:
        card = page.locator(f"#candidate-{candidate['index']}")
        rows = card.locator("tr.verdict")
        assert rows.count() == 2
        for row, verdict in zip(rows.all(), candidate["verdicts"], strict=True):
            cells = row.locator("td").all_inner_texts()
            assert cells[0] == verdict["verifier"]
            assert cells[1] == f"{verdict['score']:.3f}"
            assert verdict["detail"].strip() in cells[3]
        assert card.locator("pre.candidate-text").text_content() == candidate["text"]
    assert "unit_tests" in page.locator("#candidates").inner_text()
    assert page.locator("#prompt").inner_text().endswith(PALINDROME["prompt"])
    why = page.locator("#why").inner_text()
    assert f"#{data['index']}" in why and "argmax" in why
    # One waterfall lane per candidate, besides queue, generation and verification.
    assert page.locator("#waterfall .lane").count() == 3 + 8


def test_two_candidates_diff_in_the_page(
    server: Server, best_of_8: httpx.Response, page: Any
) -> None:
    page.goto(server.url + _trace_path(best_of_8))
    page.select_option("select[name=a]", "0")
    page.select_option("select[name=b]", "1")
    page.click("text=Diff")
    page.wait_for_selector("#diff")
    texts = {c["index"]: c["text"] for c in best_of_8.json()["candidates"]}
    shown = page.locator("#diff pre")
    # Dropping the insertions leaves candidate 0, dropping the deletions candidate 1.
    without_ins = shown.evaluate(
        "e => { const c = e.cloneNode(true); c.querySelectorAll('ins').forEach(n => n.remove());"
        " return c.textContent; }"
    )
    without_del = shown.evaluate(
        "e => { const c = e.cloneNode(true); c.querySelectorAll('del').forEach(n => n.remove());"
        " return c.textContent; }"
    )
    assert without_ins == texts[0] and without_del == texts[1]


def test_a_hostile_candidate_stays_text(server: Server, page: Any, shots: Path) -> None:
    response = post(
        server,
        "/verify",
        {
            "prompt": f"Say hi {HOSTILE}",
            "candidates": [HOSTILE, HOSTILE_IMG, "hi"],
            "verifiers": [{"type": "regex", "pattern": "script"}],
        },
    )
    assert response.status_code == 200, response.text
    page.goto(server.url + _trace_path(response))
    page.screenshot(path=str(shots / "hostile.png"), full_page=True)
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#candidate-0 pre.candidate-text").text_content() == HOSTILE
    assert page.locator("#candidate-1 pre.candidate-text").text_content() == HOSTILE_IMG
    assert page.locator("#prompt").inner_text().endswith(f"Say hi {HOSTILE}")
    assert page.locator("script").count() == 0


def test_the_list_links_each_request_and_filters_work(
    server: Server, best_of_8: httpx.Response, page: Any, shots: Path
) -> None:
    passed = post(
        server, "/verify", {"prompt": "2+2?", "candidates": ["4"], "profile": "digits"}
    ).json()
    failed = post(
        server, "/verify", {"prompt": "2+2?", "candidates": ["four"], "profile": "digits"}
    ).json()
    assert passed["passed"] and not failed["passed"]
    page.goto(server.url + "/ui")
    page.screenshot(path=str(shots / "requests.png"), full_page=True)
    listed = page.locator("#requests").inner_text()
    for request_id in (passed["id"], failed["id"], best_of_8.json()["id"]):
        assert request_id in listed
    page.select_option("select[name=profile]", "digits")
    page.select_option("select[name=outcome]", "failed")
    page.click("text=Filter")
    page.wait_for_url(re.compile(r"outcome=failed"))
    rows = page.locator("#requests tbody tr")
    assert rows.count() >= 1
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        assert cells[3] == "digits" and "✗" in cells[8]
    assert failed["id"] in page.locator("#requests").inner_text()
    assert passed["id"] not in page.locator("#requests").inner_text()
    page.click(f"text={failed['id']}")
    page.wait_for_url(re.compile(failed["id"]))
    assert page.locator("section.card.winner pre.candidate-text").text_content() == "four"


def test_the_stats_page_is_bestofk_stats(
    server: Server, server_records: Path, best_of_8: httpx.Response, page: Any, shots: Path
) -> None:
    ids = {best_of_8.json()["id"]}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the recorder writes off the request path
        if ids <= {r.id for r in read_records(server_records)}:
            break
        time.sleep(0.1)
    expected = stats.compute(read_records(server_records))
    page.goto(server.url + "/ui/stats?origin=records")
    page.screenshot(path=str(shots / "stats.png"), full_page=True)
    rows = [r.locator("td").all_inner_texts() for r in page.locator("#stats tbody tr").all()]
    assert [(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows] == [
        (r.profile, r.verifier, r.requests, f"{r.pass_at_1:.3f}", f"{r.pass_at_k:.3f}")
        for r in expected.rows
    ]
    assert page.locator("#chart rect").count() == 2 * sum(
        r.verifier == "all" for r in expected.rows
    )
    page.goto(server.url + "/ui/stats")  # this process's recent requests
    assert page.locator("#stats tbody tr").count() >= 1
    page.goto(server.url + "/ui?origin=records")  # the list, read from the record files
    assert best_of_8.json()["id"] in page.locator("#requests").inner_text()


def test_responses_point_at_their_trace_and_the_api_is_unchanged(server: Server) -> None:
    chat = post(
        server,
        "/v1/chat/completions",
        {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "best_of": 2},
    )
    assert chat.status_code == 200, chat.text
    trace = httpx.get(server.url + _trace_path(chat), timeout=30)
    assert trace.status_code == 200 and chat.json()["id"] in trace.text
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    assert not [p for p in schema["paths"] if p.startswith("/ui")]
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    endpoints = set(re.findall(r'bestofk_requests_total\{code="\d+",endpoint="([^"]+)"', metrics))
    assert "/ui/requests/{request_id}" in endpoints
    assert not [e for e in endpoints if re.search(r"(gen|ver|chatcmpl)-[0-9a-f]{8}", e)]
    missing = httpx.get(server.url + "/ui/requests/gen-nothing", timeout=30)
    assert missing.status_code == 404 and "No request gen-nothing" in missing.text


@pytest.fixture(scope="module")
def keyed_server(
    vllm_backend: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """bestofk with an API key and a redaction, in front of the session's vLLM server (no
    engine of its own)."""
    log = tmp_path_factory.mktemp("logs") / "keyed.log"
    env = engine_env(BESTOFK_CONFIG=str(CONFIG), BESTOFK_RECORD_REDACT=r'["sk-live-\\w+"]')
    keyed = start_bestofk(log, "--backend", vllm_backend.url, "--api-key", "k-ui", env=env)
    try:
        keyed.wait_ready(60)
        yield keyed
    finally:
        keyed.stop()


def test_with_api_keys_the_pages_want_the_key(keyed_server: Server, page: Any, shots: Path) -> None:
    url = keyed_server.url
    auth = {"Authorization": "Bearer k-ui"}
    response = httpx.post(
        url + "/verify",
        json={"prompt": f"My key is {SECRET}. 2+2?", "candidates": ["4", f"{SECRET} 4"]},
        headers=auth,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    trace = _trace_path(response)
    # Without the key: the API says 401, a browser is sent to the form.
    assert httpx.get(url + trace, timeout=30).status_code == 303
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    page.goto(url + trace)
    assert "/ui/login" in page.url
    page.screenshot(path=str(shots / "login.png"))
    page.fill("input[name=key]", "wrong")
    page.click("text=Open the pages")
    assert "not a key" in page.locator("#error").inner_text()
    page.fill("input[name=key]", "k-ui")
    page.click("text=Open the pages")
    page.wait_for_url(url + trace)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == UI_COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui" and cookie["value"] == ui_token("k-ui") != "k-ui"
    # The secret is redacted as the records would redact the prompt, wherever a page shows it.
    assert "[REDACTED]" in page.locator("#prompt").inner_text()
    assert "[REDACTED] 4" in page.locator("#candidates").inner_text()
    assert SECRET not in page.content()
    # The cookie opens the pages, not the API; Bearer opens both.
    cookies = {UI_COOKIE: cookie["value"]}
    assert httpx.get(url + "/v1/models", cookies=cookies, timeout=30).status_code == 401
    assert httpx.get(url + "/ui", cookies=cookies, timeout=30).status_code == 200
    assert httpx.get(url + "/ui", headers=auth, timeout=30).status_code == 200
    page.click("text=Log out")
    page.goto(url + "/ui")
    assert "/ui/login" in page.url


def test_no_ui_turns_the_pages_off(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Settings] = []
    monkeypatch.setattr(server_process, "serve", served.append)
    args = ["serve", "--no-ui", "--backend", "http://127.0.0.1:9", "--port", "0"]
    outcome = CliRunner().invoke(cli.app, args)
    assert outcome.exit_code == 0, outcome.output
    (settings,) = served
    assert settings.ui is False
    paths = [getattr(route, "path", "") for route in create_app(settings).routes]
    assert "/generate" in paths and not [p for p in paths if p.startswith("/ui")]
    assert trace_link(SimpleNamespace(settings=settings), "gen-1") == {}


# --- without a browser ----------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 16])
def test_record_files_read_backwards_as_forwards(tmp_path: Path, block: int) -> None:
    file = tmp_path / "r.jsonl"
    for tail in (b"\n", b"", b'{"partial'):
        lines = [b"a" * n for n in (0, 5, 70, 1, 200)] + [b"", b"z"]
        file.write_bytes(b"\n".join(lines) + tail)
        forwards = [line for _, line in complete_lines(file)]
        backwards = list(complete_lines_reversed(file, block=block))
        assert [line for _, line in backwards] == forwards[::-1]
        data = file.read_bytes()
        assert all(data[o : o + len(line)] == line for o, line in backwards)


def _record(scores: list[float], logprobs: list[float | None], **selection: Any) -> Record:
    candidates = [
        CandidateRecord(
            index=i,
            text=f"answer {i}",
            score=s,
            passed=s == 1.0,
            mean_logprob=lp,
            verdicts=[VerdictRecord(verifier="exact", score=s, passed=s == 1.0, detail="detail")],
            answer=selection.pop(f"answer{i}", None),
        )
        for i, (s, lp) in enumerate(zip(scores, logprobs, strict=True))
    ]
    chosen = selection.pop("chosen")
    return Record(
        id="gen-1",
        timestamp="2026-01-01T00:00:00.000+00:00",
        model="m",
        source="generate",
        prompt="p",
        messages=None,
        profile=None,
        verifiers=[],
        selection=SelectionRecord(chosen=chosen, **{"policy": "argmax", **selection}),
        stats=StatsRecord(
            k=len(scores),
            generated=len(scores),
            passing=0,
            first_sample_passed=False,
            early_exit=False,
            partial=False,
        ),
        candidates=candidates,
    )


def test_the_explanation_names_the_tie_break() -> None:
    by_logprob = trace(_record([1.0, 1.0, 0.5], [-0.9, -0.2, -0.1], chosen=1))
    assert [c.index for c in by_logprob.candidates] == [1, 0, 2]
    assert any("mean token logprob (-0.200 against -0.900)" in line for line in by_logprob.why)
    by_index = trace(_record([1.0, 1.0], [-0.9, -0.2], chosen=0, tie_break="index"))
    assert [c.index for c in by_index.candidates] == [0, 1]
    assert any("lower index" in line for line in by_index.why)


def test_the_explanation_names_required_verifiers_only_when_there_are_some() -> None:
    unrequired = trace(_record([1.0, 0.5], [None, None], chosen=0))
    assert not any("required" in line for line in unrequired.why), unrequired.why
    record = _record([1.0, 0.5], [None, None], chosen=0)
    record.verifiers = [{"type": "exact", "reference": "x", "required": True}]
    required = trace(record)
    assert any("passes every required verifier" in line for line in required.why), required.why


def test_sample_chances_and_vote_clusters_come_from_the_selection_code() -> None:
    sample = trace(_record([1.0, 0.0], [None, None], chosen=0, policy="sample", beta=2.0))
    chances = {c.index: c.chance for c in sample.candidates}
    assert chances == {
        0: pytest.approx(1 / (1 + math.exp(-2.0))),
        1: pytest.approx(1 / (1 + math.exp(2.0))),
    }
    vote = trace(
        _record(
            [0.5, 0.5, 0.9],
            [None, None, None],
            chosen=0,
            policy="vote",
            answer0="4",
            answer1="4",
            answer2="5",
        )
    )
    assert [(c.answer, c.members, c.weight, c.chosen) for c in vote.clusters] == [
        ("4", [0, 1], 1.0, True),
        ("5", [2], 0.9, False),
    ]
    assert any("heaviest cluster (answer '4', 2 of 3" in line for line in vote.why)


def test_the_history_keeps_only_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(2)
    built: list[str] = []

    def build(job: Any, result: Any, **_: Any) -> Any:
        built.append(result.request_id)
        return SimpleNamespace(id=result.request_id)

    monkeypatch.setattr("bestofk.service.history.build", build)
    for n in range(3):
        history.add(SimpleNamespace(), SimpleNamespace(request_id=f"r{n}"), None)
    assert len(history) == 2
    assert history.find("r0") is None and built == []  # found by id, nothing built
    assert [r.id for r in history.records()] == ["r2", "r1"]
    assert history.find("r1") is not None and built == ["r2", "r1"]  # built once, kept
    assert History(0).records() == []


def test_the_login_only_sends_back_to_the_pages() -> None:
    assert _next("/ui/requests/gen-1?a=1") == "/ui/requests/gen-1?a=1"
    for hostile in (
        "https://evil.example/ui",
        "//evil.example/ui",
        "/uix",
        "/v1/models",
        "/ui\\@x",
    ):
        assert _next(hostile) == "/ui"
