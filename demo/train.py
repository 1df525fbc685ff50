"""Train the bundled demo model from a fixed seed: ``python demo/train.py --seed 0``.

A tiny Llama (hidden 256, 4 layers, 4 heads of 64, tied embeddings: vLLM's CPU build needs head
dim 64) and a byte-level BPE tokenizer trained on the generated corpus, fitted to the designed
answer distributions of ``corpus.py``: every batch is drawn fresh from those distributions and
the loss covers completion tokens only, so the model learns p(completion | prompt) and nothing
about the prompts themselves. About 13 minutes on 2 CPU cores; the result goes to ``demo/model``
(safetensors, ~14 MB fp32) and the task set to ``demo/tasks.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# `corpus` is the sibling module: run as a script, this directory is on sys.path.
from corpus import (
    THINK_END,
    THINK_START,
    TOOL_CALL_END,
    TOOL_CALL_START,
    Example,
    all_examples,
    write_tasks,
)
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

MODEL_DIR = Path(__file__).with_name("model")
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
MARKERS = (THINK_START, THINK_END, TOOL_CALL_START, TOOL_CALL_END)
"""Added tokens that vLLM's parsers look up in the vocabulary (`deepseek_r1`, `hermes`). Not
special: `skip_special_tokens` (vLLM's default) keeps them in the decoded text the parsers and
verifiers read, as Qwen's and DeepSeek-R1's tokenizers do."""
VOCAB_SIZE = 2048

# One user message renders to exactly the raw prompt (after BOS), so the chat and completion
# APIs see the same tokens and one training form serves both. `{{ '\n' }}` rather than a
# literal newline: Jinja drops a newline that directly follows a block tag. With `tools` (vLLM
# passes the request's list, OpenAI format) a Hermes-style `<tools>` block comes first, one
# function per line; assistant tool calls render as `<tool_call>{json}</tool_call>` (vLLM
# hands the template the arguments as a dict; a string is written as it is) and a `tool`
# message as a `<tool_response>` block. corpus.render_tools and corpus.tool_turn_prompt write
# the same text (tested).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<tools>\n' }}"
    "{% for tool in tools %}{% set f = tool['function'] if 'function' in tool else tool %}"
    "{{ {'name': f['name'], 'description': f['description'], 'parameters': f['parameters']}"
    " | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '</tools>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% set fn = call['function'] if 'function' in call else call %}"
    "{{ '<tool_call>' }}"
    "{% if fn['arguments'] is string %}"
    "{{ '{\"name\": ' }}{{ fn['name'] | tojson }}{{ ', \"arguments\": ' }}"
    "{{ fn['arguments'] }}{{ '}' }}"
    "{% else %}{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}{% endif %}"
    "{{ '</tool_call>' }}{% endfor %}"
    "{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<tool_response>\n' }}{{ message['content'] }}{{ '\n</tool_response>' }}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
)

# Share of each step's padded-token budget per batch group. Every step takes one micro-batch
# from every group (gradients accumulated), so each family is updated at every step; dates
# and the date judge get the most of the first six, being the hardest sets to memorise (35
# dates x 2 wordings, each with ~9 candidate answers, and a week of dates sharing each
# answer). Think, math and tools, new to a warm-started model (`--init`), get the other 45%;
# the first six get half the tokens they had when they were trained from scratch (2,400 a
# step then), enough to keep their fit.
GROUP_TOKENS = {
    "factorial": 0.049,
    "dates": 0.131,
    "code": 0.065,
    "summary": 0.060,
    "judge_factorial": 0.098,
    "judge_dates": 0.142,
    "think": 0.170,
    "math": 0.086,
    "tools": 0.199,
}


@dataclass
class Encoded:
    """An example with its prompt and every candidate completion already tokenized."""

    prompt: list[int]
    completions: list[list[int]]
    probs: list[float]
    right: list[bool]
    weight: float
    targets: list[list[tuple[list[int], list[float]]]]
    """Per completion and position: the designed next-token distribution given that prefix."""


def next_token_targets(
    completions: list[list[int]], probs: list[float]
) -> list[list[tuple[list[int], list[float]]]]:
    """For each completion and position, the designed distribution of the next token.

    That is p(token | prompt, completion prefix) under the designed mixture: the mass of all
    completions sharing the prefix, split by their next token. Training on these exact
    conditionals along a sampled completion has the same expected loss as training on the
    sampled tokens (cross-entropy of a sequence is the sum of its conditionals'), with far
    less variance: a batch sees the whole 40/60 split at each branch point, not one draw of it.
    """
    out = []
    for completion in completions:
        rows = []
        for t in range(len(completion)):
            mass: dict[int, float] = {}
            for other, p in zip(completions, probs, strict=True):
                if len(other) > t and other[:t] == completion[:t]:
                    mass[other[t]] = mass.get(other[t], 0.0) + p
            total = sum(mass.values())
            rows.append((list(mass), [m / total for m in mass.values()]))
        out.append(rows)
    return out


def train_tokenizer(examples: dict[str, list[Example]]) -> PreTrainedTokenizerFast:
    """A byte-level BPE over every prompt and completion, with BOS added by a post-processor."""
    texts: list[str] = []
    for group in examples.values():
        for ex in group:
            texts.append(ex.prompt)
            texts.extend(text for text, _ in ex.answers)
    # Added and special tokens are split off before BPE: learn no merges across them.
    for marker in (*MARKERS, EOS):
        texts = [text.replace(marker, " ") for text in texts]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKERS])
    bos_id = tok.token_to_id(BOS)
    # Without a post-processor a tokenizer built from a raw `tokenizers` object adds no BOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def encode(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> list[Encoded]:
    """Tokenize prompt and completion separately (as vLLM sees them) and append EOS."""
    eos = tokenizer.eos_token_id
    out = []
    for ex in examples:
        prompt = tokenizer(ex.prompt)["input_ids"]
        completions = [
            tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text, _ in ex.answers
        ]
        probs = [p for _, p in ex.answers]
        right = [text in ex.correct for text, _ in ex.answers]
        targets = next_token_targets(completions, probs)
        out.append(Encoded(prompt, completions, probs, right, ex.weight, targets))
    return out


def make_batch(
    rng: random.Random, group: list[Encoded], size: int, pad_id: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` examples drawn by weight, each with a completion drawn from its distribution.

    Returns input ids, attention mask and soft targets: at each completion position the
    designed next-token distribution (``next_token_targets``), zero on prompt and padding.
    """
    picks = rng.choices(group, weights=[e.weight for e in group], k=size)
    seqs = []
    for enc in picks:
        i = rng.choices(range(len(enc.completions)), weights=enc.probs)[0]
        seqs.append((enc.prompt + enc.completions[i], len(enc.prompt), enc.targets[i]))
    width = max(len(s) for s, _, _ in seqs)
    ids = torch.full((size, width), pad_id, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    # targets[b, t] is the distribution of token t + 1, aligned with logits[b, t].
    targets = torch.zeros((size, width, vocab))
    for row, (seq, n_prompt, rows) in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        for t, (tokens, probs) in enumerate(rows):
            targets[row, n_prompt - 1 + t, tokens] = torch.tensor(probs)
    return ids, mask, targets


def soft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against the soft targets over the positions that have one."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = -(targets * logp).sum(-1)
    return per_position.sum() / targets.sum(-1).sum().clamp(min=1)


def _width(enc: Encoded) -> int:
    """The longest sequence ``enc`` can produce: its prompt and its longest completion."""
    return len(enc.prompt) + max(map(len, enc.completions))


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def fit_report(
    model: LlamaForCausalLM, encoded: dict[str, list[Encoded]], every: int = 1
) -> dict[str, float]:
    """Teacher-forced check of the fit, before vLLM ever sees the model.

    For answer groups: the mean model probability of the right completions (exactly what
    pass@1 would be if no sample ever mutated; designed 0.4). For judge groups: the mean
    probability of the designed label (" yes" for right candidates, " no" for wrong ones).
    ``every`` > 1 checks only every so many examples of each group (progress reports).
    """
    model.eval()
    report: dict[str, float] = {}
    for name, group in encoded.items():
        scores = []
        if name.startswith("judge"):
            # The designed label (probability 0.9) is listed first; score its first token.
            # Batched with right padding: each prompt's last real position gives the label.
            picked = group[::every]
            for start in range(0, len(picked), 64):
                chunk = picked[start : start + 64]
                width = max(len(enc.prompt) for enc in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, enc in enumerate(chunk):
                    ids[row, : len(enc.prompt)] = torch.tensor(enc.prompt)
                    mask[row, : len(enc.prompt)] = 1
                probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
                for row, enc in enumerate(chunk):
                    scores.append(float(probs[row, len(enc.prompt) - 1, enc.completions[0][0]]))
            report[name] = sum(scores) / len(scores)
            continue
        for enc in group[::every]:
            right = 0.0
            for completion, ok in zip(enc.completions, enc.right, strict=True):
                if not ok:
                    continue
                seq = torch.tensor([enc.prompt + completion])
                logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1], -1)
                picked = logp[len(enc.prompt) - 1 :].gather(1, seq[0, len(enc.prompt) :, None])
                right += float(picked.sum().exp())
            scores.append(right)
        report[name] = sum(scores) / len(scores)
    model.train()
    return report


@torch.no_grad()
def warm_start(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, init: Path) -> None:
    """Start from an earlier demo model's weights (same architecture, older tokenizer).

    Every weight but the (tied) embedding is copied as it is; an embedding row is copied for
    each token whose string the old vocabulary also has, and the other rows (new merges, the
    added markers) start at the mean of the old rows. The corpus only grew, so most tokens
    carry over and the old families start near their fit.
    """
    old = LlamaForCausalLM.from_pretrained(init)
    old_vocab = PreTrainedTokenizerFast.from_pretrained(init).get_vocab()
    state = {k: v for k, v in old.state_dict().items() if "embed_tokens" not in k}
    state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("embed_tokens" in k or k == "lm_head.weight" for k in missing), missing
    old_rows = old.get_input_embeddings().weight
    rows = model.get_input_embeddings().weight
    rows[:] = old_rows.mean(0)
    carried = 0
    for token, new_id in tokenizer.get_vocab().items():
        if (old_id := old_vocab.get(token)) is not None:
            rows[new_id] = old_rows[old_id]
            carried += 1
    print(f"warm start from {init}: {carried} of {len(rows)} embeddings carried over", flush=True)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save the tokenizer with the chat template inside ``tokenizer_config.json``.

    transformers 5 writes the template to ``chat_template.jinja`` and names its own backend
    class; folding both back keeps the files readable by older transformers (and so by any
    vLLM build), which still find the template in the config.
    """
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def main() -> None:
    """Parse arguments, train, save the model and the task set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--tokens", type=int, default=2200, help="padded tokens per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-every", type=int, default=0, help="steps between fit reports")
    parser.add_argument(
        "--init", type=Path, help="start from this earlier demo model (see warm_start)"
    )
    args = parser.parse_args()

    started = time.monotonic()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    examples = all_examples()
    tokenizer = train_tokenizer(examples)
    encoded = {name: encode(tokenizer, group) for name, group in examples.items()}
    # A fixed padded-token budget per group and step: long groups (code, summaries) get small
    # micro-batches and short ones (factorial) large ones.
    sizes = {
        name: max(2, round(args.tokens * GROUP_TOKENS[name] / max(map(_width, g))))
        for name, g in encoded.items()
    }
    print(f"vocab {len(tokenizer)}; micro-batch sizes {sizes}", flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    if args.init:
        warm_start(model, tokenizer, args.init)
    print(f"parameters {sum(p.numel() for p in model.parameters()):,}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    running: dict[str, float] = {}
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=args.warmup)
        for name, size in sizes.items():
            ids, mask, targets = make_batch(
                rng, encoded[name], size, tokenizer.pad_token_id, len(tokenizer)
            )
            # Each group's mean token loss counts the same, however long its completions.
            loss = soft_loss(model(input_ids=ids, attention_mask=mask).logits, targets)
            loss.backward()
            value = loss.item()
            running[name] = 0.8 * running.get(name, value) + 0.2 * value
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            losses = " ".join(f"{n}={v:.3f}" for n, v in running.items())
            print(f"step {step} {time.monotonic() - started:.0f}s loss {losses}", flush=True)
        if args.report_every and step % args.report_every == args.report_every - 1:
            report = fit_report(model, encoded, every=7)
            print("  fit " + " ".join(f"{n}={v:.3f}" for n, v in report.items()), flush=True)

    print(f"trained in {time.monotonic() - started:.0f}s", flush=True)
    report = fit_report(model, encoded)
    print("fit " + " ".join(f"{n}={v:.3f}" for n, v in report.items()), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(args.out, safe_serialization=True)
    save_tokenizer(tokenizer, args.out)
    write_tasks()
    print(f"saved to {args.out} in {time.monotonic() - started:.0f}s total", flush=True)


if __name__ == "__main__":
    main()
