"""Reasoning and answer: each candidate split by vLLM's own reasoning parsers.

A reasoning model writes its thinking, an end marker (``</think>`` for DeepSeek-R1 and Qwen3),
then its answer. Verifiers should judge the answer, and OpenAI clients want the two apart
(``message.reasoning``). bestofk never splits by hand: it composes vLLM's parser by name
(``vllm.reasoning``, through ``vllm.parser.ParserManager`` exactly as vLLM's chat server does)
over the model's tokenizer, and calls its ``parse`` on each finished candidate, as vLLM's server
does on each finished choice. A candidate whose thinking never ended (no end marker; vLLM's
parsers return no content) has no answer: cut by ``max_tokens`` when its finish_reason is
``length``.

Parsers are stateful, so each candidate gets a fresh one, as each choice does in vLLM.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


def tokenizer_loader(name: str | None) -> Callable[[], Any]:
    """Loads tokenizer ``name`` with vLLM's loader (what its server gives its parsers)."""

    def load() -> Any:
        if name is None:
            raise ValueError(
                "reasoning and tool-call parsers over backends need the model's tokenizer: "
                "pass --tokenizer PATH_OR_NAME (or set BESTOFK_BACKEND_MODEL to one)"
            )
        from vllm.tokenizers import get_tokenizer

        return get_tokenizer(name)

    return load


@dataclass(frozen=True, slots=True)
class Split:
    """One output, read by a reasoning parser."""

    reasoning: str | None
    """What the model thought; None when the parser found no reasoning."""
    answer: str | None
    """What follows the reasoning; None when there is none (the thinking never ended)."""
    reasoning_tokens: int = 0
    """Generated tokens that are not the answer (the thinking and its markers)."""


def vllm_installed() -> bool:
    """Whether vLLM can be imported: the ``remote`` image and a plain ``pip install`` lack it,
    and with it its parsers and the in-process engine."""
    return importlib.util.find_spec("vllm") is not None


@cache
def parser_names() -> tuple[str, ...]:
    """Every reasoning parser vLLM registers, by the name ``--reasoning-parser`` takes."""
    from vllm.reasoning import ReasoningParserManager

    return tuple(ReasoningParserManager.list_registered())


def check_parser_name(name: str) -> str:
    """``name`` if vLLM has a reasoning parser by that name, else ValueError listing them.
    Without vLLM no name can be checked: the server's pre-flight check refuses it then."""
    if vllm_installed() and name not in parser_names():
        raise ValueError(
            f"unknown reasoning parser {name!r}; vLLM's are: {', '.join(parser_names())}"
        )
    return name


class ReasoningParsers:
    """vLLM's reasoning parsers by name, over one tokenizer loaded on first use."""

    def __init__(self, load_tokenizer: Callable[[], Any]) -> None:
        self._load_tokenizer = load_tokenizer
        self._tokenizer: Any = None
        self._parsers: dict[str, Any] = {}
        self._markers: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def _parser_class(self, name: str) -> Any:
        """The composed ``Parser`` class (checked against the tokenizer once)."""
        with self._lock:
            parser = self._parsers.get(name)
            if parser is None:
                check_parser_name(name)
                if self._tokenizer is None:
                    self._tokenizer = self._load_tokenizer()
                from vllm.parser.parser_manager import ParserManager

                # Raises TypeError naming the flag when the tokenizer lacks the parser's markers.
                parser = ParserManager.get_parser(
                    reasoning_parser_name=name, tokenizer=self._tokenizer
                )
                self._parsers[name] = parser
            return parser

    def check(self, name: str) -> None:
        """Load ``name``'s parser and the tokenizer now (at start-up), raising what is wrong."""
        self._parser_class(name)

    def split(
        self, name: str, text: str, tokens: int, chat_template_kwargs: Mapping[str, Any] | None
    ) -> Split:
        """``text`` (a whole completion of ``tokens`` tokens) read by parser ``name``."""
        parser_cls = self._parser_class(name)
        kwargs = dict(chat_template_kwargs or {})
        parser = parser_cls(self._tokenizer, None, chat_template_kwargs=kwargs)
        reasoning, answer, _ = parser.parse(text, _request(kwargs))
        return Split(reasoning, answer or None, self.reasoning_tokens(tokens, answer))

    def markers(self, name: str) -> tuple[str, str]:
        """What starts and ends the thinking for parser ``name`` (``<think>``, ``</think>``);
        "" for one it does not say."""
        markers = self._markers.get(name)
        if markers is None:
            parser = self._parser_class(name)(self._tokenizer, None).reasoning_parser
            markers = ("", "")
            if parser is not None:
                markers = (parser.reasoning_start_str or "", parser.reasoning_end_str or "")
            self._markers[name] = markers
        return markers

    def reasoning_tokens(self, tokens: int, answer: str | None) -> int:
        """The generated tokens before the answer: all ``tokens`` but the answer's, which are
        counted by tokenizing it again (exact for what the model wrote, in practice)."""
        if not answer:
            return tokens
        if self._tokenizer is None:
            return 0
        answer_tokens = len(self._tokenizer.encode(answer, add_special_tokens=False))
        return max(0, tokens - answer_tokens)


def _request(chat_template_kwargs: dict[str, Any]) -> Any:
    """The vLLM chat request a parser reads its options from (``chat_template_kwargs``; the
    messages are never read by ``parse``)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model="bestofk",
        messages=[{"role": "user", "content": ""}],
        chat_template_kwargs=chat_template_kwargs or None,
    )
