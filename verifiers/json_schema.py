"""`json_schema`: is the candidate valid JSON that matches a JSON Schema?

Validation can be exponential in the schema (an ``anyOf`` that doubles at each of 20 levels is
a 1.4 KB schema with a million ways to fail) and linear in a 60 KB document is still
milliseconds of pure Python, so it runs in a worker process, bounded in time and memory. Only a
tiny document against a small schema without branches, references or regexes is checked inline.
Checking a schema against its metaschema costs about 0.3 ms per object in it, so only small
schemas are checked when the request is parsed (an invalid one is a 400); a larger one is
checked in the worker before its first document (an invalid one is an error verdict).
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar, Literal

import jsonschema
from jsonschema.protocols import Validator
from pydantic import ConfigDict, Field, field_validator

from bestofk.verifiers.base import (
    INLINE_MAX_CHARS,
    Candidate,
    NotCheap,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_bounded,
)
from bestofk.verifiers.text import fenced_block

_LINEAR_KEYWORDS = frozenset({
    "$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "format", "type", "enum", "const", "required", "properties",
    "additionalProperties", "items", "prefixItems", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "maxProperties",
})  # fmt: skip
"""Keywords that check each document node at most once per schema node: no branches
(anyOf, oneOf, not, if), no references, no regexes (pattern), nothing quadratic (uniqueItems).
``format`` is an annotation here: no format checker is enabled."""
_SUBSCHEMAS = ("properties", "additionalProperties", "items", "prefixItems")
MAX_SCHEMA_NODES = 4096
"""Objects and arrays in one schema; more is a 400."""
MAX_SCHEMA_DEPTH = 64
"""Levels of nesting in one schema; more is a 400 (jsonschema recurses once per level)."""
SMALL_SCHEMA_NODES = 32
"""Schemas this small are checked against their metaschema, and used, on the event loop."""


def count_nodes(value: Any, limit: int, max_depth: int = MAX_SCHEMA_DEPTH) -> int:
    """Objects and arrays in ``value``, counting stopped once past ``limit``; ValueError when
    they nest deeper than ``max_depth``."""
    count, todo = 0, [(value, 1)]
    while todo and count <= limit:
        node, depth = todo.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            raise ValueError(f"the schema is nested too deeply (more than {max_depth} levels)")
        count += 1
        todo.extend(
            (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
        )
    return count


def check_schema(value: dict[str, Any]) -> dict[str, Any]:
    """Bound a client's schema (ValueError past :data:`MAX_SCHEMA_NODES` objects or
    :data:`MAX_SCHEMA_DEPTH` levels) and, when it is small, check it against its metaschema;
    a larger one is checked in a worker, where :func:`check_document` first uses it: checking
    here would hold the event loop for about 0.3 ms per object."""
    nodes = count_nodes(value, MAX_SCHEMA_NODES)
    if nodes > MAX_SCHEMA_NODES:
        raise ValueError(
            f"the schema has more than {MAX_SCHEMA_NODES} objects and arrays; simplify it"
        )
    if nodes <= SMALL_SCHEMA_NODES:
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON Schema: {exc.message}") from None
    return value


def is_linear(schema: Any) -> bool:
    """Whether validating against ``schema`` checks each document node at most once per
    schema node: only :data:`_LINEAR_KEYWORDS`, in it and in every subschema."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not schema.keys() <= _LINEAR_KEYWORDS:
        return False
    for keyword in _SUBSCHEMAS:
        value = schema.get(keyword)
        if keyword == "properties":
            value = list(value.values()) if isinstance(value, dict) else value
        subschemas = value if isinstance(value, list) else [] if value is None else [value]
        if not all(is_linear(sub) for sub in subschemas):
            return False
    return True


class JsonSchemaSpec(VerifierSpec):
    """``schema``: a JSON Schema (any draft; ``$schema`` picks it, else the latest)."""

    type: Literal["json_schema"] = "json_schema"
    # "schema" would shadow a BaseModel attribute, so it lives under an alias.
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_schema(value)


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str, check: bool) -> Validator | str:
    """The schema's validator, or why the schema is invalid (``check``: against its
    metaschema first). Keyed by the schema's JSON: each worker builds one once."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    if check:
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return f"invalid JSON Schema: {exc.message}"
    validator: Validator = cls(schema)
    return validator


def check_document(schema_json: str, small: bool, text: str, *, inline: bool = False) -> Verdict:
    """The json_schema verdict for ``text`` (for :func:`~bestofk.verifiers.base.run_bounded`).
    ``small``: linear, and checked against its metaschema when the request was parsed."""
    if inline and (not small or len(text) > INLINE_MAX_CHARS):
        raise NotCheap
    validator = _validator(schema_json, check=not small)
    if isinstance(validator, str):
        return Verdict.failure("json_schema", validator)
    try:
        document = json.loads(fenced_block(text) or text)
    except ValueError as exc:
        return Verdict("json_schema", 0.0, False, f"not valid JSON: {exc}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return Verdict("json_schema", 0.0, False, f"schema violation at {where}: {error.message}")
    return Verdict("json_schema", 1.0, True, "valid")


class JsonSchemaVerifier:
    """Score 1 for JSON (bare or in a fenced block) that validates, else 0."""

    Spec: ClassVar[type[VerifierSpec]] = JsonSchemaSpec

    def __init__(self, spec: VerifierSpec, resources: VerifierResources) -> None:
        assert isinstance(spec, JsonSchemaSpec)
        self.spec = spec
        self._schema_json = json.dumps(spec.schema_, sort_keys=True)
        self._small = count_nodes(spec.schema_, SMALL_SCHEMA_NODES) <= SMALL_SCHEMA_NODES and (
            is_linear(spec.schema_)
        )
        self._workers = resources.workers

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Inline for a tiny document and a small linear schema, else in a worker process."""
        args = (self._schema_json, self._small, candidate.text)
        return await run_bounded(self._workers, check_document, *args)
