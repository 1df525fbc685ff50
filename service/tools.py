"""Tool calls: vLLM's tool parser, chosen and gated as vLLM's server does.

``--tool-call-parser NAME`` names a parser of ``vllm.tool_parsers`` and ``--enable-auto-tool-
choice`` lets the model decide (``tool_choice: "auto"``, the default when ``tools`` are given);
``required`` and a named function need the parser too, since every candidate's calls are read
from its text (neither engine is asked to parse: the remote one gets ``tool_choice: "none"`` so
it renders the tools and returns the raw text). The parser runs over the served model's
tokenizer: the in-process engine's own, or the one ``--tokenizer`` (else the model) names.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bestofk.service.errors import InvalidRequestError
from bestofk.service.reasoning import tokenizer_loader
from bestofk.verifiers.base import ParsedCalls, ToolCall

if TYPE_CHECKING:
    from bestofk.service.engines.base import Engine
    from bestofk.service.settings import Settings

log = logging.getLogger(__name__)

MAX_TOOLS = 128
"""Most tools one request may offer."""
ToolChoice = str | Mapping[str, Any]
"""``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}``."""
Parse = Callable[[str], ParsedCalls]


class ToolParsing:
    """The server's tool parser (``tool_call_parser``), built per request over ``tokenizer``."""

    def __init__(
        self,
        parser: str | None,
        enable_auto: bool,
        tokenizer: Callable[[], Any],
        preload_tokenizer: bool = False,
    ) -> None:
        self.parser = parser
        self.enable_auto = enable_auto
        self._tokenizer = tokenizer
        self._preload = preload_tokenizer
        """Load the tokenizer in :meth:`load` (one of its own, not an engine's)."""
        self._cls: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> ToolParsing:
        """The parser the settings name, over the in-process engine's tokenizer, or with
        backends the one :attr:`Settings.tokenizer_name` names."""
        if settings.engine != "openai":
            return cls(
                settings.tool_call_parser,
                settings.enable_auto_tool_choice,
                lambda: getattr(engine, "llm").tokenizer,  # noqa: B009 (not in the protocol)
            )
        load = functools.cache(tokenizer_loader(settings.tokenizer_name))
        return cls(settings.tool_call_parser, settings.enable_auto_tool_choice, load, True)

    def load(self) -> None:
        """Import vLLM's parser class and, with backends, load the tokenizer (seconds: call it
        off the loop, at start-up); a name vLLM does not know is a ValueError listing the ones
        it does."""
        if self.parser is None or self._cls is not None:
            return
        from vllm.entrypoints.openai.chat_completion import protocol  # noqa: F401 (warm-up)
        from vllm.tool_parsers import ToolParserManager

        try:
            self._cls = ToolParserManager.get_tool_parser(self.parser)
        except KeyError:
            known = ", ".join(ToolParserManager.list_registered())
            raise ValueError(
                f"unknown tool call parser {self.parser!r}; vLLM's are: {known}"
            ) from None
        if self._preload:
            self._tokenizer()

    def check(self, tools: Sequence[Mapping[str, Any]], tool_choice: ToolChoice) -> None:
        """Refuse what vLLM's server refuses: ``auto`` without ``--enable-auto-tool-choice``
        and a parser, ``required`` or a named function without a parser, a name not in
        ``tools``."""
        names = {str((t.get("function") or {}).get("name")) for t in tools}
        if isinstance(tool_choice, Mapping):
            name = (tool_choice.get("function") or {}).get("name")
            if name not in names:
                raise InvalidRequestError(
                    f"tool_choice names {name!r}, which is not a function of tools",
                    param="tool_choice",
                )
        if tool_choice == "auto" and not (self.enable_auto and self.parser):
            raise InvalidRequestError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                "to be set (BESTOFK_ENABLE_AUTO_TOOL_CHOICE, BESTOFK_TOOL_CALL_PARSER)",
                param="tool_choice",
            )
        if tool_choice != "none" and not self.parser:
            raise InvalidRequestError(
                f"tool_choice={tool_choice!r} requires --tool-call-parser to be set "
                "(BESTOFK_TOOL_CALL_PARSER): every candidate's calls are read from its text",
                param="tool_choice",
            )

    def parser_for(self, tools: Sequence[Mapping[str, Any]], tool_choice: ToolChoice) -> Parse:
        """A parse of candidate texts for one request's ``tools``."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.renderers.chat_utils import make_tool_call_id

        self.load()
        request = ChatCompletionRequest(
            model="", messages=[], tools=list(tools), tool_choice=tool_choice
        )
        parser = self._cls(self._tokenizer(), request.tools)
        # The marker a call opens with, where the parser has one: text that holds it but
        # parses to no call is a call gone wrong, not an answer in text.
        marker = getattr(parser, "tool_call_start_token", None)

        def parse(text: str) -> ParsedCalls:
            try:
                with _quiet(parser):
                    info = parser.extract_tool_calls(text, request)
            except Exception:  # a parser's bug on odd text must not fail the request
                log.debug("tool parser %s failed on a candidate", self.parser, exc_info=True)
                return ParsedCalls(content=text or None, unparsed=True)
            if not info.tools_called:
                unparsed = isinstance(marker, str) and marker in text
                return ParsedCalls(content=text or None, unparsed=unparsed)
            calls = tuple(
                ToolCall(
                    id=call.id or make_tool_call_id(),
                    name=call.function.name,
                    arguments=call.function.arguments,
                )
                for call in info.tool_calls
            )
            return ParsedCalls(content=info.content or None, calls=calls)

        return parse


@contextlib.contextmanager
def _quiet(parser: Any) -> Iterator[None]:
    """vLLM's parsers log a traceback for every text that fails to parse; a candidate that
    fails is ordinary here (its verdict says so), so those logs are dropped."""
    logger = logging.getLogger(type(parser).__module__)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
