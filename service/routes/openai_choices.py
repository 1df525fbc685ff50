"""How the OpenAI endpoints render a chosen candidate, as vLLM shapes it: a chat or text
completion's choice, its stream deltas and its logprobs.

:class:`ChatRenderer` serves ``/v1/chat/completions``, :class:`CompletionRenderer`
``/v1/completions``; :mod:`.openai_response` puts what they render into a response or a stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bestofk.service.results import openai_tool_calls
from bestofk.service.schemas.openai import BestOfKFields, ChatCompletionRequest, CompletionRequest
from bestofk.service.selection import Scored
from bestofk.verifiers.base import TokenLogprob, ToolCall


class Renderer:
    """How one endpoint shapes choices, chunks and logprobs."""

    object_name = ""
    chunk_object_name = ""

    def __init__(self, body: BestOfKFields, want_logprobs: bool) -> None:
        self.body = body
        self.want_logprobs = want_logprobs

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        """The choice at ``position`` of a whole (not streamed) response."""
        raise NotImplementedError

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """What a stream sends of one choice: (field, text, the logprobs of its tokens)."""
        return [("content", text, tokens) for text, tokens in _pieces(scored)]

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        """A chunk of ``field`` (``content``, or ``reasoning`` in a chat); ``tokens`` are the
        logprobs of the tokens ``text`` shows, which travel with it as they do from vLLM (when
        the client asked for logprobs)."""
        raise NotImplementedError

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        """The stream chunk that ends the choice at ``position``: its finish reason."""
        raise NotImplementedError


class ChatRenderer(Renderer):
    """``/v1/chat/completions``: an assistant message, its reasoning and tool calls apart."""

    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, body: ChatCompletionRequest) -> None:
        super().__init__(body, body.logprobs)
        self.top_n = body.top_logprobs or 0

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        candidate = scored.candidate
        # As vLLM's ChatMessage: ``reasoning`` always there (null without a parser); with one,
        # the answer as content (null when the thinking never ended), the thinking apart.
        message: dict[str, Any] = {"role": "assistant", "content": candidate.text}
        message["reasoning"] = self._reasoning(candidate.reasoning)
        if candidate.output is not None:
            message["content"] = candidate.text or None
        finish_reason = candidate.finish_reason or "stop"
        if calls := self.calls(scored):
            message["content"] = candidate.calls.content if candidate.calls else None
            message["tool_calls"] = openai_tool_calls(calls)
            finish_reason = "tool_calls"
        return {
            "index": position,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": self._logprobs(visible_logprobs(scored)),
        }

    def _reasoning(self, reasoning: str | None) -> str | None:
        assert isinstance(self.body, ChatCompletionRequest)
        return reasoning if self.body.include_reasoning else None

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """The reasoning first, as vLLM streams it (``delta.reasoning``), then the answer."""
        candidate = scored.candidate
        reasoning = self._reasoning(candidate.reasoning)
        if candidate.output is None:
            return super().pieces(scored)
        thought: list[tuple[str, str, list[TokenLogprob]]] = []
        if reasoning:
            thought = [("reasoning", w, []) for w in _words(reasoning)]
        tokens = _answer_logprobs(visible_logprobs(scored), candidate.text)
        if not candidate.text:
            return thought  # no answer: vLLM streams no content
        if tokens and "".join(t.token for t in tokens) == candidate.text:
            answer = [("content", t.token, [t]) for t in tokens]
        else:
            answer = [("content", w, []) for w in _words(candidate.text)]
        return [*thought, *answer]

    def calls(self, scored: Scored) -> list[ToolCall]:
        """The chosen candidate's tool calls to return: only the first unless parallel calls
        are allowed (``parallel_tool_calls``, as vLLM filters them)."""
        parsed = scored.candidate.calls
        calls = list(parsed.calls) if parsed is not None else []
        assert isinstance(self.body, ChatCompletionRequest)
        return calls[:1] if self.body.parallel_tool_calls is False else calls

    def tool_call_deltas(self, position: int, scored: Scored) -> list[dict[str, Any]]:
        """The calls as stream choices: each whole in one delta, as vLLM sends a call whose
        arguments it has complete."""
        return [
            {
                "index": position,
                "delta": {"tool_calls": [{"index": i, **call}]},
                "finish_reason": None,
                "logprobs": None,
            }
            for i, call in enumerate(openai_tool_calls(self.calls(scored)))
        ]

    def _logprobs(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        return {"content": [_chat_token(t, self.top_n) for t in tokens]}

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {field: text}
        if first:
            delta["role"] = "assistant"
        return {
            "index": position,
            "delta": delta,
            "finish_reason": None,
            "logprobs": self._logprobs(tokens),
        }

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        return {
            "index": position,
            "delta": {},
            "finish_reason": "tool_calls"
            if self.calls(scored)
            else scored.candidate.finish_reason or "stop",
            "logprobs": None,
        }


def _chat_token(t: TokenLogprob, n: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    top = [entry(tok, lp) for tok, lp in client_top(t, n)]
    return {**entry(t.token, t.logprob), "top_logprobs": top}


def client_top(t: TokenLogprob, n: int) -> list[tuple[str, float]]:
    """The alternatives a client asking ``n`` top logprobs sees, as vLLM sends them: the
    ``n`` likeliest tokens but the sampled one (``n - 1`` when it is among them). The engine
    may have computed more (confidence-aware stopping wants 20)."""
    if len(t.top) <= n:  # what the engine computed is what the client asked
        return list(t.top)
    alternatives = sorted(t.top, key=lambda item: -item[1])
    sampled_among = sum(lp > t.logprob for _, lp in alternatives) < n
    return alternatives[: max(0, n - 1) if sampled_among else n]


class CompletionRenderer(Renderer):
    """``/v1/completions``: the whole output as text, logprobs with their text offsets."""

    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, body: CompletionRequest) -> None:
        super().__init__(body, body.logprobs is not None)
        self.top_n = body.logprobs or 0
        self._offsets: dict[int, int] = {}
        """Per choice: where the next streamed chunk starts in its text (``text_offset``)."""

    def choice(self, position: int, scored: Scored) -> dict[str, Any]:
        # vLLM's completions endpoint splits nothing: the text is the whole output.
        candidate = scored.candidate
        return {
            "index": position,
            "text": candidate.output if candidate.output is not None else candidate.text,
            "finish_reason": scored.candidate.finish_reason or "stop",
            "logprobs": self._logprobs(visible_logprobs(scored), 0),
        }

    def _logprobs(self, tokens: Sequence[TokenLogprob], start: int) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        offsets, offset = [], start
        for t in tokens:
            offsets.append(offset)
            offset += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [
                {t.token: t.logprob, **dict(client_top(t, self.top_n))} for t in tokens
            ],
            "text_offset": offsets,
        }

    def pieces(self, scored: Scored) -> list[tuple[str, str, list[TokenLogprob]]]:
        """The whole output, thinking included (vLLM's completions endpoint splits nothing)."""
        output = scored.candidate.output
        if output is None:
            return super().pieces(scored)
        tokens = visible_logprobs(scored)
        if tokens and "".join(t.token for t in tokens) == output:
            return [("content", t.token, [t]) for t in tokens]
        return [("content", w, []) for w in _words(output)]

    def delta(
        self,
        position: int,
        text: str,
        first: bool,
        tokens: Sequence[TokenLogprob],
        field: str = "content",
    ) -> dict[str, Any]:
        start = self._offsets.get(position, 0)
        self._offsets[position] = start + len(text)
        return {
            "index": position,
            "text": text,
            "finish_reason": None,
            "logprobs": self._logprobs(tokens, start),
        }

    def finish(self, position: int, scored: Scored) -> dict[str, Any]:
        return {
            "index": position,
            "text": "",
            "finish_reason": scored.candidate.finish_reason or "stop",
            "logprobs": None,
        }


def visible_logprobs(scored: Scored) -> list[TokenLogprob]:
    """The logprobs of the tokens the text shows: a trailing end-of-sequence token (which
    vLLM reports, decoded as e.g. ``</s>``) is not part of the completion's text."""
    tokens = list(scored.candidate.logprobs)
    candidate = scored.candidate
    text = candidate.output if candidate.output is not None else candidate.text
    shown = "".join(t.token for t in tokens)
    if tokens and shown != text and shown[: -len(tokens[-1].token) or None] == text:
        tokens.pop()
    return tokens


def _words(text: str) -> list[str]:
    """``text`` in pieces that join back to it: each word with the space after it."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _answer_logprobs(tokens: list[TokenLogprob], answer: str) -> list[TokenLogprob]:
    """The last tokens, which spell ``answer`` after the thinking; [] when none do."""
    spelled = ""
    for start in range(len(tokens) - 1, -1, -1):
        spelled = tokens[start].token + spelled
        if len(spelled) >= len(answer):
            return tokens[start:] if spelled == answer else []
    return []


def _pieces(scored: Scored) -> list[tuple[str, list[TokenLogprob]]]:
    """The text as the tokens it was generated in, each with its logprob, when they spell it;
    else, with logprobs, the whole text in one piece carrying them all; else as words."""
    text = scored.candidate.text
    tokens = visible_logprobs(scored)
    if tokens and "".join(t.token for t in tokens) == text:
        return [(t.token, [t]) for t in tokens]
    if tokens:
        return [(text, tokens)]
    return [(w, []) for w in _words(text)]
