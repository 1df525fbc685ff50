"""The demo's think, math and tools families against vLLM's own parsers and chat rendering.

The demo model writes `<think>…</think>` traces and Hermes `<tool_call>{json}</tool_call>`
calls so that vLLM's `deepseek_r1` reasoning parser and `hermes` tool parser read them. These
tests run those parsers (from the installed vLLM, not copies) over every designed completion
of the corpus with the bundled tokenizer: the markers must be single tokens the parsers find in
the vocabulary, survive `skip_special_tokens`, and split or parse exactly as the corpus means.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_demo_model import MODEL, corpus, measure

MARKERS = ("<think>", "</think>", "<tool_call>", "</tool_call>")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The bundled tokenizer as vLLM loads it."""
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(MODEL))


def _examples(family: str) -> list[Any]:
    return [ex for group in corpus.all_examples().values() for ex in group if ex.family == family]


def _request(tools: list[dict[str, Any]] | None = None) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model="demo", messages=[{"role": "user", "content": "x"}], tools=tools
    )


def test_markers_are_single_tokens_kept_when_decoding(tokenizer: Any) -> None:
    """Each marker is one vocabulary entry, and decoding with skip_special_tokens keeps it."""
    vocab = tokenizer.get_vocab()
    for marker in MARKERS:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        assert ids == [vocab[marker]], marker
        text = f"a{marker}b"
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert vocab[marker] not in tokenizer.all_special_ids


def test_deepseek_r1_parser_splits_every_designed_think_completion(tokenizer: Any) -> None:
    """vLLM's parser and measure.split_thinking agree on (reasoning, answer) for every
    completion; complete traces give the answer `exact` checks, cut ones give none."""
    from vllm.reasoning import ReasoningParserManager

    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(tokenizer)
    start, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    seen_cut = seen_right = 0
    for ex in _examples("think"):
        for text, _ in ex.answers:
            reasoning, answer = parser.extract_reasoning(text, _request())
            assert (reasoning, answer) == measure.split_thinking(text), text
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert parser.is_reasoning_end(ids) == ("</think>" in text), text
            assert parser.count_reasoning_tokens(ids) == measure.thinking_tokens(ids, start, end)
            assert measure.thinking_tokens(ids, start, end) > 0
            if answer is None:
                seen_cut += 1
            elif text in ex.correct:
                seen_right += 1
                assert tokenizer.decode(parser.extract_content_ids(ids)) == answer
    assert seen_cut >= 2 * len(_examples("think")) and seen_right == len(_examples("think"))


def test_think_tasks_pass_on_the_answer_and_fail_on_the_full_text() -> None:
    """`exact` on the answer passes the right completions; on the whole text, none."""
    examples = {ex.prompt: ex for ex in _examples("think")}
    tasks = [t for t in measure.load_tasks() if t["family"] == "think"]
    assert tasks
    for task in tasks:
        ex = examples[task["prompt"]]
        for text, _ in ex.answers:
            assert measure.check(task, text) == (text in ex.correct), text
            assert not all(measure.CHECKERS[v["type"]](v, text) for v in task["verifiers"])


def test_math_forms_of_the_right_value_share_the_right_mass() -> None:
    """Four LaTeX forms per value; every form of the right value (and only those) passes."""
    for ex in _examples("math"):
        forms = {text for text, _ in ex.answers}
        assert any(text.startswith("\\boxed{") for text in ex.correct)
        assert sum(p for text, p in ex.answers if text in ex.correct) == pytest.approx(0.4)
        assert len(forms) > len(ex.correct) >= 2


def test_hermes_parser_reads_every_designed_tool_call(tokenizer: Any) -> None:
    """Right calls parse to the expected call; bad JSON and plain text are no call; wrong
    names, missing and mistyped arguments parse but differ from the expected call."""
    from vllm.tool_parsers import ToolParserManager

    cls = ToolParserManager.get_tool_parser("hermes")
    tasks = {t["prompt"]: t for t in measure.load_tasks() if t["family"] == "tools"}
    outcomes: set[str] = set()
    for ex in _examples("tools"):
        task = tasks.get(ex.prompt)
        if task is None or "expected_call" not in task:
            continue
        parser = cls(tokenizer, None)
        request = _request(task["tools"])
        assert parser.adjust_request(request).skip_special_tokens is False
        for text, _ in ex.answers:
            info = parser.extract_tool_calls(text, request)
            right = text in ex.correct
            assert measure.check(task, text) == right, text
            if not info.tools_called:
                outcomes.add("plain" if "<tool_call>" not in text else "bad json")
                assert not right, text
                continue
            (call,) = info.tool_calls
            got = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
            assert (got == task["expected_call"]) == right, text
            outcomes.add("right" if right else "wrong call")
    assert outcomes == {"right", "wrong call", "bad json", "plain"}


def test_chat_template_renders_tools_and_the_tool_turn() -> None:
    """With `tools` the template writes the corpus's `<tools>` block before the question; an
    assistant tool call (arguments as a JSON string or, as vLLM passes them, a dict) and a
    `tool` message render to the tool-turn prompt the model was trained on."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(MODEL)
    rows = [t for t in measure.load_tasks() if t["family"] == "tools"]
    assert len(rows) == len(corpus.TOOL_TASKS) + len(corpus.TOOL_TURNS)
    for task in rows:
        messages = task.get("messages") or [{"role": "user", "content": task["prompt"]}]
        if "messages" not in task:
            question = task["prompt"].rpartition("</tools>\n")[2]
            messages = [{"role": "user", "content": question}]
        text = tok.apply_chat_template(messages, tools=task["tools"], tokenize=False)
        assert text == tok.bos_token + task["prompt"], task["id"]
        if "messages" in task:
            as_dicts = json.loads(json.dumps(messages))
            for call in as_dicts[1]["tool_calls"]:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
            text = tok.apply_chat_template(as_dicts, tools=task["tools"], tokenize=False)
            assert text == tok.bos_token + task["prompt"], task["id"]
