"""`json_schema`: is the candidate valid JSON that matches a JSON Schema?"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import jsonschema
from jsonschema.protocols import Validator
from pydantic import ConfigDict, Field, field_validator

from verifiers.base import (
    Candidate,
    RequestContext,
    Verdict,
    VerifierResources,
    VerifierSpec,
    run_blocking,
    timed,
)
from verifiers.text import fenced_block


class JsonSchemaSpec(VerifierSpec):
    """``schema``: a JSON Schema (any draft; ``$schema`` picks it, else the latest)."""

    type: Literal["json_schema"] = "json_schema"
    # "schema" would shadow a BaseModel attribute, so it lives under an alias.
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON Schema: {exc.message}") from None
        return value


def _check(validator: Validator, text: str) -> Verdict:
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
        cls = jsonschema.validators.validator_for(spec.schema_)
        self._validator: Validator = cls(spec.schema_)

    async def verify(self, ctx: RequestContext, candidate: Candidate) -> Verdict:
        """Parse and validate off the event loop (large documents are CPU work)."""
        return await timed(
            "json_schema", lambda: run_blocking(_check, self._validator, candidate.text)
        )
