"""How a request's settings are resolved into a job: K, max_tokens, sampling and selection
layered field by field (request > profile > server), and the verifiers a request implies."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from bestofk.service.engines.base import Prompt, SamplingConfig
from bestofk.service.errors import InvalidRequestError
from bestofk.service.jobs import JobFactory, JobRequest
from bestofk.service.labels import Label
from bestofk.service.schemas.native import Sampling, Selection
from bestofk.service.schemas.openai import ChatCompletionRequest
from bestofk.service.selection import SelectionConfig
from bestofk.service.settings import Settings

PROFILE = {"verifiers": [{"type": "regex", "pattern": r"\d"}], "selection": {"policy": "vote"}}


def factory(**settings: Any) -> JobFactory:
    engine: Any = SimpleNamespace(model_name="demo")
    return JobFactory(Settings(**settings), engine)


def build(jobs: JobFactory, **fields: Any) -> Any:
    return jobs.build("gen-test", JobRequest(prompt=Prompt(text="x"), **fields))


def test_selection_layers_server_then_profile_then_request() -> None:
    jobs = factory(selection={"tie_break": "index", "beta": 3.0}, profiles={"p": PROFILE})
    plain = build(jobs).selection
    assert (plain.policy, plain.tie_break, plain.beta) == ("argmax", "index", 3.0)
    profiled = build(jobs, profile="p").selection
    assert (profiled.policy, profiled.tie_break, profiled.beta) == ("vote", "index", 3.0)
    asked = build(jobs, profile="p", selection={"tie_break": "logprob"}).selection
    assert (asked.policy, asked.tie_break, asked.beta) == ("vote", "logprob", 3.0)


def test_logprobs_are_asked_of_the_engine_only_for_the_logprob_tie_break() -> None:
    jobs = factory()
    default = build(jobs).sampling  # ties by index: the engine computes no logprobs
    assert default.logprobs is False and not default.wants_logprobs
    assert build(jobs, selection={"tie_break": "logprob"}).sampling.logprobs is True
    # A client that wants logprobs in the response still gets them.
    shown = build(jobs, sampling={"top_logprobs": 2}).sampling
    assert shown.wants_logprobs


def test_sampling_layers_server_then_profile_then_request() -> None:
    profile = {"sampling": {"temperature": 0.3, "top_k": 20}, "max_tokens": 64}
    jobs = factory(
        sampling={"temperature": 0.6, "top_p": 0.9},
        default_max_tokens=100,
        profiles={"p": profile},
    )
    plain = build(jobs).sampling
    assert (plain.temperature, plain.top_p, plain.top_k, plain.max_tokens) == (0.6, 0.9, 0, 100)
    profiled = build(jobs, profile="p").sampling
    assert (profiled.temperature, profiled.top_p, profiled.top_k) == (0.3, 0.9, 20)
    assert profiled.max_tokens == 64
    asked = build(jobs, profile="p", sampling={"temperature": 1.2, "max_tokens": 8}).sampling
    assert (asked.temperature, asked.top_p, asked.top_k, asked.max_tokens) == (1.2, 0.9, 20, 8)
    # A null field is a field left out, as vLLM's server reads it.
    assert build(jobs, profile="p", sampling={"temperature": None}).sampling.temperature == 0.3


def test_the_built_in_defaults_are_the_dataclasses_own() -> None:
    sampling = build(factory()).sampling
    # The engine computes logprobs only when the tie-break reads them (index, by default).
    assert sampling == SamplingConfig(logprobs=SelectionConfig().by_logprob)
    assert build(factory()).selection == SelectionConfig()


def test_a_profile_with_greedy_sampling_samples_one_candidate() -> None:
    jobs = factory(profiles={"greedy": {"sampling": {"temperature": 0.0}, "k": 4}})
    job = build(jobs, profile="greedy")
    assert (job.k, job.k_requested) == (1, 4)
    assert build(jobs, profile="greedy", sampling={"temperature": 0.5}).k == 4


def test_max_tokens_past_the_limit_is_refused_only_when_asked_for() -> None:
    jobs = factory(default_max_tokens=512, limits={"max_tokens": 100})
    assert build(jobs).sampling.max_tokens == 100  # the server's own choice is capped
    with pytest.raises(InvalidRequestError, match="max_tokens=101"):
        build(jobs, sampling={"max_tokens": 101})


def test_a_profile_sampling_default_is_checked_at_start_up() -> None:
    with pytest.raises(ValidationError, match="temperature"):
        factory(profiles={"p": {"sampling": {"temperature": 3.0}}})
    with pytest.raises(ValidationError, match="max_tokens"):
        factory(profiles={"p": {"sampling": {"max_tokens": 3}}})  # a profile's own field


def test_a_response_schema_and_a_reward_label_become_verifiers_here() -> None:
    jobs = factory()
    schema = {"type": "object"}
    job = build(jobs, sampling={"json_schema": schema})
    assert [(s.type, s.required) for s in job.specs] == [("json_schema", True)]
    labelled = build(jobs, given=["120"], label=Label("120", 3))
    assert [s.type for s in labelled.specs] == ["exact"]
    with pytest.raises(InvalidRequestError, match="sample 3 has no verifier") as err:
        build(jobs, given=["120"], label=Label(None, 3))
    assert err.value.param == "labels.3"


def test_the_wire_schemas_send_none_for_every_field_left_out() -> None:
    sampling = Sampling().sampling_fields()
    assert set(sampling.values()) == {None}
    assert Selection().fields() == {}
    chat = ChatCompletionRequest.model_validate(
        {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert set(chat.sampling_fields().values()) == {None}


def test_workers_keep_what_a_profile_left_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers`` rebuilds the settings from ``as_env()``: a profile's unset sampling and
    selection fields stay unset there, so the server's still apply under the profile."""
    settings = Settings(
        sampling={"top_p": 0.9}, selection={"tie_break": "index"},
        profiles={"q": {"sampling": {"temperature": 0.3}, "selection": {"policy": "vote"}}},
    )  # fmt: skip
    for name in [n for n in os.environ if n.startswith("BESTOFK_")]:
        monkeypatch.delenv(name)
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    job = build(JobFactory(Settings(), SimpleNamespace(model_name="demo")), profile="q")
    assert (job.sampling.temperature, job.sampling.top_p) == (0.3, 0.9)
    assert (job.selection.policy, job.selection.tie_break) == ("vote", "index")
