"""The body of ``POST /v1/messages``: vLLM's Anthropic request model plus bestofk's fields.

vLLM's model (``vllm.entrypoints.anthropic.protocol``) declares what Anthropic's SDK sends;
bestofk adds its extras (the SDK's ``extra_body``) as the OpenAI route does. Fields it cannot
honour are refused with a 400 naming them, not ignored. Importing vLLM costs seconds, so the
route imports this module at its first request, not at start-up.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest

from bestofk.service.schemas.native import BestOfKExtras
from bestofk.service.tools import MAX_TOOLS
from bestofk.verifiers.json_schema import check_schema

REFUSED: dict[str, str] = {
    "thinking": "extended thinking is not supported by bestofk",
    "cache_salt": "prefix-cache salting is not supported by bestofk",
    "kv_transfer_params": "disaggregated serving is not supported by bestofk",
    "ec_transfer_params": "disaggregated serving is not supported by bestofk",
    "vllm_xargs": "vLLM's custom extension arguments are not supported by bestofk",
    "watermarking": "watermarking is not supported by bestofk",
    "chat_template_kwargs": "chat template arguments are not supported by bestofk",
}
"""Request fields refused when set, each with the reason the 400 gives."""
TEXT_BLOCKS = frozenset({"text", "tool_use", "tool_result"})
"""Content block types bestofk renders (and ``thinking`` of past turns, which it drops)."""


class MessagesRequest(AnthropicMessagesRequest, BestOfKExtras):
    """``POST /v1/messages``, with bestofk's fields."""

    @model_validator(mode="after")
    def _supported(self) -> MessagesRequest:
        for name, reason in REFUSED.items():
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: {reason}; leave it out")
        if self.output_config is not None and self.output_config.effort is not None:
            raise ValueError("output_config.effort: reasoning effort is not supported by bestofk")
        system = self.system if isinstance(self.system, list) else []
        blocks = [
            *system,
            *(b for m in self.messages if isinstance(m.content, list) for b in m.content),
        ]
        for block in blocks:
            if block.type not in TEXT_BLOCKS and block.type not in (
                "thinking",
                "redacted_thinking",
            ):
                raise ValueError(
                    f"content blocks of type {block.type!r} are not supported by bestofk "
                    f"(it serves {', '.join(sorted(TEXT_BLOCKS))})"
                )
        if self.json_schema is not None:
            check_schema(self.json_schema)  # it becomes a json_schema verifier: a 400 here
        if len(self.tools or ()) > MAX_TOOLS:
            raise ValueError(f"tools: at most {MAX_TOOLS}")
        for tool in self.tools or ():
            check_schema(tool.input_schema)  # every call is validated against it
        return self

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """``output_config.format``'s schema: constrained decoding and a required verifier."""
        fmt = self.output_config.format if self.output_config is not None else None
        return fmt.json_schema if fmt is not None else None
