"""How a request's settings are resolved into a job: selection layered field by field."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bestofk.service.engines.base import Prompt
from bestofk.service.jobs import JobFactory, JobRequest
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
