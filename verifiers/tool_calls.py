"""`tool_calls`: are a candidate's tool calls ones the request allows?

Added to every request that offers tools (it is not asked for): each call must name a function
of ``tools``, its arguments must be a JSON object that validates against that function's
``parameters`` schema, and ``tool_choice`` must be honoured (``required``: at least one call;
a named function: a call of it and nothing else). A text that opens a call the tool parser
could not read fails. Without a call, under ``auto``, the candidate answers in text: it passes.
Schema validation runs through :func:`~bestofk.verifiers.base.run_bounded`, inline when small.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import jsonschema
from pydantic import ConfigDict

from bestofk.verifiers.base import (
    INLINE_MAX_CHARS,
    Candidate,
    NotCheap,
    RequestContext,
    ToolCall,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.json_schema import SMALL_SCHEMA_NODES, count_nodes, is_linear

NAME = "tool_calls"
INVALID_CALLS_SCORE = 0.1
"""The least a candidate with parsed calls scores, valid or not: when no candidate passes, one
that made a call ranks above one that made none or one the parser could not read, so under
``tool_choice: "required"`` the reply holds a call whenever any candidate made one, as
``vllm serve``'s always does."""


class ToolCallsSpec(VerifierSpec):
    """``tools`` in OpenAI's format and the request's ``tool_choice``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tool_calls"] = "tool_calls"
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any] = "auto"


def call_key(calls: Sequence[ToolCall]) -> str:
    """Canonical (name, arguments) of ``calls``, for ``vote``: the same calls with their
    arguments' keys in another order, or other spacing, are one answer."""
    canonical = []
    for call in calls:
        try:
            arguments: Any = json.loads(call.arguments)
        except ValueError:
            arguments = call.arguments
        canonical.append([call.name, arguments])
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def forced_name(tool_choice: str | dict[str, Any]) -> str | None:
    """The function a named ``tool_choice`` forces, else None."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return str(name) if name is not None else None
    return None


def check_calls(
    parameters_json: str, choice_json: str, calls_json: str, *, inline: bool = False
) -> Verdict:
    """The verdict for a candidate's ``calls`` (for :func:`run_bounded`)."""
    if inline and len(calls_json) > INLINE_MAX_CHARS:
        raise NotCheap
    parameters: dict[str, Any] = json.loads(parameters_json)
    if inline and not all(
        count_nodes(schema, SMALL_SCHEMA_NODES) <= SMALL_SCHEMA_NODES and is_linear(schema)
        for schema in parameters.values()
    ):
        raise NotCheap
    choice = json.loads(choice_json)
    calls: list[list[str]] = json.loads(calls_json)
    if not calls:
        if choice == "required":
            return Verdict(NAME, 0.0, False, "no tool call, but tool_choice is 'required'")
        if (name := forced_name(choice)) is not None:
            return Verdict(NAME, 0.0, False, f"no tool call, but tool_choice names {name!r}")
        return Verdict(NAME, 1.0, True, "no tool call")
    problems = [p for name, arguments in calls if (p := _problem(name, arguments, parameters))]
    valid = len(calls) - len(problems)
    forced = forced_name(choice)
    if forced is not None and any(name != forced for name, _ in calls):
        problems.append(f"tool_choice names {forced!r}")
    if problems:
        score = max(INVALID_CALLS_SCORE, 0.5 * valid / len(calls))
        return Verdict(NAME, score, False, "; ".join(problems))
    names = ", ".join(name for name, _ in calls)
    return Verdict(NAME, 1.0, True, f"{len(calls)} valid call(s): {names}")


def _problem(name: str, arguments: str, parameters: dict[str, Any]) -> str | None:
    if name not in parameters:
        return f"{name!r} is not a function of tools"
    try:
        document = json.loads(arguments)
    except ValueError as exc:
        return f"{name}: arguments are not JSON ({exc})"
    if not isinstance(document, dict):
        return f"{name}: arguments are not a JSON object"
    schema = parameters[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"{name}: arguments violate its schema at {where}: {error.message}"
    return None


class ToolCallsVerifier:
    """Score 1 for valid calls (or none, where none is allowed); a share of 0.5 for the calls
    that are valid when any is not, at least :data:`INVALID_CALLS_SCORE`; 0 for a call that did
    not parse or a missing one."""

    Spec: ClassVar[type[VerifierSpec]] = ToolCallsSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, ToolCallsSpec)
        self.spec = spec
        functions = [t.get("function") or {} for t in spec.tools]
        self._parameters = json.dumps(
            {f["name"]: f.get("parameters") or {"type": "object"} for f in functions},
            sort_keys=True,
        )
        self._choice = json.dumps(spec.tool_choice)
        self._workers = resources.workers

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Check the calls the tool parser read from ``candidate``."""
        parsed = candidate.calls
        if parsed is not None and parsed.unparsed:
            return Verdict(NAME, 0.0, False, "a tool call did not parse")
        calls = [[c.name, c.arguments] for c in (parsed.calls if parsed is not None else ())]
        args = (self._parameters, self._choice, json.dumps(calls))
        return await run_bounded(self._workers, check_calls, *args)
