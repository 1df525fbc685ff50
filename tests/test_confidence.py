"""DeepConf's confidences and online cut (``service/confidence.py``), and confidence-aware
stopping through the server.

The unit tests read the demo model's own logprobs: ``tests/data/confidence_logprobs.json``
holds real candidates of its thinking family with their top-20 logprobs, as the engine hands
them to a watch (regenerate it with ``python tests/test_confidence.py URL`` against a running
server). The server tests run the real in-process engine (``load_aware_server``, whose
load-aware K does not reach K=8 requests sent one at a time).
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from bestofk.service.confidence import (
    ConfidenceConfig,
    ConfidenceWatch,
    GroupConfidence,
    calibrate,
    lowest_group_confidence,
    percentile,
    token_confidence,
)
from bestofk.service.defaults import switched
from bestofk.service.engines.base import (
    STREAM_INTERVAL,
    CandidateWatch,
    EngineHealth,
    Prompt,
    SamplingConfig,
)
from bestofk.service.pipeline import Pipeline
from bestofk.service.rerank import RerankJob
from bestofk.service.routes.openai_choices import client_top
from bestofk.service.schemas.confidence import Confidence
from bestofk.service.settings import Profile
from bestofk.tooling.procs import Server
from bestofk.verifiers.base import Candidate, TokenLogprob, VerifierResources

DATA = Path(__file__).parent / "data" / "confidence_logprobs.json"
SEEDS = (1, 2, 3, 4)


def traces() -> list[dict[str, Any]]:
    return list(json.loads(DATA.read_text())["traces"])


def logprobs(trace: dict[str, Any]) -> list[TokenLogprob]:
    """A trace's tokens as an engine gives them: the alternatives without the sampled token."""
    return [
        TokenLogprob(token, logprob, tuple(("", v) for v in others))
        for token, logprob, others in trace["tokens"]
    ]


def deltas(tokens: list[TokenLogprob]) -> list[list[TokenLogprob]]:
    """The tokens in the chunks the engine streams them in."""
    return [tokens[i : i + STREAM_INTERVAL] for i in range(0, len(tokens), STREAM_INTERVAL)]


def runaway(trace: dict[str, Any]) -> bool:
    """A trace that lost the thread: it never closes its thinking (or closes it with a
    non-number), where every coherent one ends ``</think>`` and a number."""
    _, closed, answer = trace["text"].partition("</think>")
    return not (closed and answer.strip().isdigit())


def test_token_confidence_is_minus_the_mean_of_the_top_k() -> None:
    token = logprobs(traces()[0])[3]
    values = sorted([token.logprob, *(v for _, v in token.top)], reverse=True)
    assert token_confidence(token, 20) == pytest.approx(-np.mean(values[:20]))
    assert token_confidence(token, 5) == pytest.approx(-np.mean(values[:5]))
    # A peaked position (the model is sure) is more confident than a flat one.
    flat = TokenLogprob("a", -2.0, (("b", -2.1), ("c", -2.2)))
    peaked = TokenLogprob("a", -0.01, (("b", -6.0), ("c", -9.0)))
    assert token_confidence(peaked, 3) > token_confidence(flat, 3)
    assert math.isfinite(token_confidence(TokenLogprob("a", -math.inf, ()), 20))


def test_an_unlikely_sampled_token_is_dropped_from_the_top_k() -> None:
    # vLLM returns the sampled token beside the top k when it is not among them.
    unlikely = [t for tr in traces() for t in logprobs(tr) if len(t.top) == 20]
    assert unlikely, "the data has no sampled token outside the top 20"
    token = unlikely[0]
    top20 = sorted((v for _, v in token.top), reverse=True)[:20]
    assert token.logprob < min(top20)
    assert token_confidence(token, 20) == pytest.approx(-np.mean(top20))


def test_group_confidence_slides_over_the_window() -> None:
    tokens = logprobs(max(traces(), key=lambda t: len(t["tokens"])))
    confidences = [token_confidence(t) for t in tokens]
    groups = GroupConfidence(window=16)
    seen = [groups.add(c) for c in confidences]
    assert seen[:15] == [None] * 15
    expected = [np.mean(confidences[i - 15 : i + 1]) for i in range(15, len(confidences))]
    assert seen[15:] == pytest.approx(expected)
    assert groups.lowest == pytest.approx(min(expected))
    # Shorter than a window: the mean of what there is.
    short = GroupConfidence(window=16)
    for c in confidences[:5]:
        short.add(c)
    assert short.lowest == pytest.approx(np.mean(confidences[:5]))
    assert GroupConfidence().lowest is None


def test_runaway_traces_have_the_lowest_group_confidence() -> None:
    lowest = {t["text"]: lowest_group_confidence(logprobs(t)) for t in traces()}
    bad = [v for t, v in lowest.items() if runaway({"text": t})]
    good = [v for t, v in lowest.items() if not runaway({"text": t})]
    assert len(bad) >= 3 and len(good) >= 8
    assert max(bad) < min(good)  # what lets a threshold cut one and keep the other


def test_percentile_is_numpys() -> None:
    values = [lowest_group_confidence(logprobs(t)) or 0.0 for t in traces()]
    for q in (0, 10, 37.5, 90, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert calibrate(values, "high") == pytest.approx(np.percentile(values, 10))
    assert calibrate(values, "low") == pytest.approx(np.percentile(values, 90))
    with pytest.raises(ValueError):
        calibrate(values, 0.0)


def test_a_watch_calibrated_on_a_warm_up_wave_cuts_the_runaways() -> None:
    """DeepConf online: the seed-1 wave warms up (all of it, run to the end), the later waves
    are watched delta by delta and cut at the first window below the threshold."""
    warm_up = [t for t in traces() if t["seed"] == 1]
    watched = [t for t in traces() if t["seed"] != 1]
    assert any(runaway(t) for t in watched) and not all(runaway(t) for t in watched)
    lowest = [lowest_group_confidence(logprobs(t)) for t in warm_up]
    watch = ConfidenceWatch(calibrate([v for v in lowest if v is not None], "high"))
    cut_at: dict[int, int] = {}
    for index, trace in enumerate(watched):
        seen = 0
        for chunk in deltas(logprobs(trace)):
            seen += len(chunk)
            if watch.delta(index, chunk):
                cut_at[index] = seen
                break
    assert set(cut_at) == {i for i, t in enumerate(watched) if runaway(t)} == watch.cut
    # Cut before its end: the tokens after it are the ones saved.
    assert all(cut_at[i] < len(watched[i]["tokens"]) for i in cut_at)


def test_streamed_deltas_give_the_offline_lowest() -> None:
    watch = ConfidenceWatch(threshold=None)  # a warm-up watch: observes, never cuts
    for index, trace in enumerate(traces()):
        tokens = logprobs(trace)
        assert not any(watch.delta(index, chunk) for chunk in deltas(tokens))
        assert watch.lowest(index) == pytest.approx(lowest_group_confidence(tokens))
    assert watch.cut == set() and watch.lowest(999) is None


def test_a_finished_candidate_s_confidence_completes_what_the_watch_saw() -> None:
    """The delta that finishes a candidate is not offered to a watch: ``finish`` adds it to
    what the watch computed, for the very figure the whole trace gives (the response's
    ``confidence``), whichever delta the candidate finished on, or none watched at all."""
    watch = ConfidenceWatch(threshold=None)
    for index, trace in enumerate(traces()):
        tokens = logprobs(trace)
        chunks = deltas(tokens)
        for chunk in chunks[: index % (len(chunks) + 1)]:
            watch.delta(index, chunk)
        assert watch.finish(index, tokens) == lowest_group_confidence(tokens)
        assert watch.finish(index, tokens) == lowest_group_confidence(tokens)  # adds nothing


class TraceEngine:
    """An engine over the recorded traces, streamed in deltas through the watch as the real
    engines do: the delta that finishes a candidate is not offered to it, and a cut candidate
    ends with the delta that cut it."""

    model_name = "traces"
    health = EngineHealth("ready")

    def __init__(self, tokens: list[list[TokenLogprob]]) -> None:
        self.tokens = tokens

    def sample(
        self,
        prompt: Prompt,
        k: int,
        sampling: SamplingConfig,
        request_id: str,
        first_index: int = 0,
        watch: CandidateWatch | None = None,
    ) -> TraceStream:
        return TraceStream(self.tokens[first_index : first_index + k], first_index, watch)


class TraceStream:
    def __init__(
        self, tokens: list[list[TokenLogprob]], first: int, watch: CandidateWatch | None
    ) -> None:
        self.prompt_tokens = 3
        self.completion_tokens = sum(len(t) for t in tokens)
        self._gen = self._run(tokens, first, watch)

    def __aiter__(self) -> AsyncIterator[Candidate]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def _run(
        self, traces: list[list[TokenLogprob]], first: int, watch: CandidateWatch | None
    ) -> AsyncGenerator[Candidate, None]:
        for index, tokens in enumerate(traces, start=first):
            chunks, seen, cut = deltas(tokens), list[TokenLogprob](), False
            for n, chunk in enumerate(chunks, start=1):
                seen += chunk
                if n < len(chunks) and watch is not None and watch.delta(index, chunk):
                    cut = True
                    break
            yield Candidate(
                index, "x", "abort" if cut else "stop", len(seen), logprobs=seen, cut=cut
            )


async def test_every_candidate_s_confidence_is_its_whole_trace_s() -> None:
    """The response's ``confidence`` is each candidate's lowest group confidence over all its
    tokens, whether the warm-up's calibration, the watch or neither computed it first."""
    ordered = sorted(traces(), key=lambda t: t["seed"] != 1)  # the seed-1 wave warms up
    tokens = [logprobs(t) for t in ordered]
    warmup = sum(t["seed"] == 1 for t in ordered)
    job = RerankJob(
        request_id="c",
        prompt=Prompt(text="q"),
        k=len(tokens),
        sampling=SamplingConfig(),
        specs=[],
        confidence=ConfidenceConfig(warmup=warmup),
    )
    result = await Pipeline(TraceEngine(tokens), VerifierResources()).run(job)
    lowest = [lowest_group_confidence(t) for t in tokens]
    assert result.threshold == calibrate([v for v in lowest[:warmup] if v is not None], "high")
    assert result.waves == 2 and result.cut and len(result.candidates) > result.cut + warmup
    for s in result.candidates:
        assert s.confidence == lowest_group_confidence(s.candidate.logprobs), s.candidate.index


THINK = "Think step by step, then give the factorial of 8 as a number."


def confident(server: Server, seed: int, **fields: Any) -> dict[str, Any]:
    body = {
        "prompt": THINK,
        "k": 8,
        "sampling": {"temperature": 1.0, "max_tokens": 80, "seed": seed},
        "selection": {"policy": "vote"},
        "confidence": {"warmup": 4},
        **fields,
    }
    response = httpx.post(server.url + "/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return dict(response.json())


def cut_total(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == "bestofk_confidence_cut_candidates":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no bestofk_confidence_cut_candidates_total on /metrics")


def test_the_server_cuts_watched_candidates_below_the_warm_up(load_aware_server: Server) -> None:
    """A warm-up wave of 4 runs to the end; the 4 after it are watched, and a runaway among
    them is cut: marked, unverified, out of the vote, counted."""
    before = cut_total(load_aware_server)
    bodies = [confident(load_aware_server, seed) for seed in SEEDS]
    cut = [c for body in bodies for c in body["candidates"] if c["cut"]]
    assert cut, "no candidate was cut over the seeded requests"
    for body in bodies:
        stats, candidates = body["stats"], body["candidates"]
        assert stats["waves"] == 2 and stats["sampled"] == 8
        assert isinstance(stats["confidence_threshold"], float)
        assert stats["cut"] == sum(c["cut"] for c in candidates)
        assert all(isinstance(c["confidence"], float) for c in candidates)
        chosen = next(c for c in candidates if c["index"] == body["index"])
        assert not chosen["cut"]
        for c in candidates:
            if c["cut"]:
                assert c["index"] >= 4  # the warm-up is never watched
                assert c["finish_reason"] == "abort" and c["verdicts"] == []
                assert c["confidence"] < stats["confidence_threshold"]
    assert cut_total(load_aware_server) - before == len(cut)
    # The trace page shows a request with cut candidates (unverified, without verdicts).
    with_cut = next(body for body in bodies if body["stats"]["cut"])
    page = httpx.get(f"{load_aware_server.url}/ui/requests/{with_cut['id']}", timeout=30)
    cut_text = next(c["text"] for c in with_cut["candidates"] if c["cut"])
    assert page.status_code == 200 and html.escape(cut_text[-8:]) in page.text


def test_confidence_through_the_openai_client(load_aware_server: Server) -> None:
    client = OpenAI(base_url=load_aware_server.url + "/v1", api_key="unused")
    completion = client.completions.create(
        model="demo",
        prompt=THINK,
        max_tokens=80,
        temperature=1.0,
        seed=SEEDS[0],
        logprobs=2,
        extra_body={"best_of": 8, "confidence": {"warmup": 4, "keep": "low"}},
    )
    native = completion.model_extra["bestofk"]  # type: ignore[index]
    assert native["stats"]["waves"] == 2 and native["stats"]["confidence_threshold"] is not None
    # The engine computed 20 alternatives for the watch; the client sees the 2 it asked
    # (and the sampled token beside them when it was not among them, as vLLM sends it).
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs and logprobs.tokens
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        others = [v for t, v in top.items() if t != token]
        assert len(top) == 2 or (len(top) == 3 and top[token] < min(others)), top
    plain = client.completions.create(
        model="demo", prompt=THINK, max_tokens=16, extra_body={"best_of": 2, "confidence": True}
    )
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("confidence", "field"),
    [
        ({"keep": "medium"}, "keep"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"warmup": 0}, "warmup"),
        ({"windows": 8}, "windows"),
    ],
)
def test_bad_confidence_fields_are_400(
    load_aware_server: Server, confidence: dict[str, Any], field: str
) -> None:
    body = {"prompt": THINK, "k": 2, "confidence": confidence}
    response = httpx.post(load_aware_server.url + "/generate", json=body, timeout=60)
    assert response.status_code == 400
    param = response.json()["error"]["param"]
    assert param.startswith("confidence") and field in param.split("."), param


def test_a_client_sees_the_top_logprobs_it_asked() -> None:
    # Real positions with the engine's 20 alternatives, as confidence-aware stopping asks.
    for trace in traces()[:3]:
        for token in logprobs(trace):
            likeliest = sorted([token.logprob, *(v for _, v in token.top)], reverse=True)
            for n in (0, 1, 2, 5):
                shown = client_top(token, n)
                assert [v for _, v in shown] == sorted((v for _, v in shown), reverse=True)
                # As vLLM: the n likeliest, the sampled token beside them rather than among.
                among = token.logprob >= likeliest[n - 1] if n else False
                assert len(shown) == (n - 1 if among else n)
    few = TokenLogprob("a", -0.1, (("b", -3.0),))
    assert client_top(few, 2) == [("b", -3.0)]  # the engine computed what was asked


def test_a_profile_turns_it_on_and_a_request_tunes_it() -> None:
    tuned = Profile(confidence=Confidence(keep="low", window=8)).confidence
    assert switched(None, tuned, ConfidenceConfig) == ConfidenceConfig(keep="low", window=8)
    asked = switched({"warmup": 2}, tuned, ConfidenceConfig)
    assert asked == ConfidenceConfig(keep="low", warmup=2, window=8)
    assert switched(False, tuned, ConfidenceConfig) is None
    assert switched(True, None, ConfidenceConfig) == ConfidenceConfig()
    assert switched(None, None, ConfidenceConfig) is None


def test_the_warm_up_is_adaptive_ks_first_wave_else_half() -> None:
    config = ConfidenceConfig()
    assert config.warmup_size(8) == 4 and config.warmup_size(5) == 3
    assert config.warmup_size(8, first_wave=2) == 2
    assert ConfidenceConfig(warmup=16).warmup_size(8) == 8  # all warm-up: nothing watched
    assert config.warmup_size(1) == 1


def collect(url: str) -> dict[str, Any]:
    """Sample the data file's candidates from the server at ``url``."""
    import httpx

    out: list[dict[str, Any]] = []
    seen = set()
    for seed in (1, 2, 3):
        for n in (6, 7, 8):
            prompt = f"Think step by step, then give the factorial of {n} as a number."
            body = {
                "model": "demo", "prompt": prompt, "n": 8, "best_of": 8, "logprobs": 20,
                "temperature": 1.0, "max_tokens": 80, "seed": seed,
            }  # fmt: skip
            response = httpx.post(url + "/v1/completions", json=body, timeout=300)
            response.raise_for_status()
            for choice in response.json()["choices"]:
                if (prompt, choice["text"]) in seen:
                    continue
                seen.add((prompt, choice["text"]))
                trace = {"prompt": prompt, "seed": seed, "text": choice["text"]}
                trace["finish_reason"] = choice["finish_reason"]
                trace["tokens"] = _tokens(choice["logprobs"])
                out.append(trace)
    return {"top_logprobs": 20, "traces": out}


def _tokens(lp: dict[str, Any]) -> list[list[Any]]:
    """OpenAI completion logprobs as [token, logprob, the other top logprobs, descending]."""
    rows = zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)
    return [
        [tok, round(value, 3), sorted((round(v, 2) for t, v in top.items() if t != tok))[::-1]]
        for tok, value, top in rows
    ]


if __name__ == "__main__":
    json.dump(collect(sys.argv[1]), sys.stdout, separators=(",", ":"))
