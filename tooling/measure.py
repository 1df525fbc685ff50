"""How far training moved a model, measured with transformers on CPU (no server needed).

- :func:`kl_per_completion`: KL(trained ‖ reference) in nats per completion, the price of the
  seed's ``p0·exp(βR)`` tilt: a Monte-Carlo mean of ``log p(y|x) - log p0(y|x)`` over
  completions sampled from the trained model.
- :func:`sample`: K completions of one prompt, as a served model samples them.
- :func:`next_token_prob`: P(token | prompt), e.g. a judge's " yes".

transformers' ``generate`` samples with ``top_k=50`` unless told otherwise, which is not the
model's distribution (vLLM's default is no top-k); everything here passes ``top_k=0``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def _load(path: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _generate(
    model: Any, tokenizer: Any, prompt: str, n: int, max_new_tokens: int, temperature: float
) -> tuple[Any, int]:
    """(sequences with the prompt, prompt length) for ``n`` samples of ``prompt``."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out, ids.shape[1]


def _completion_mask(sequences: Any, start: int, eos_id: int) -> Any:
    """1 over each completion's tokens up to and including its first EOS."""
    import torch

    completion = sequences[:, start:]
    is_eos = (completion == eos_id).int()
    # Tokens after the first EOS are padding: their running EOS count before them is >= 1.
    before = torch.cumsum(is_eos, dim=1) - is_eos
    return (before == 0).float()


def _logprob(model: Any, sequences: Any, start: int, mask: Any) -> Any:
    """Sum of log p(token) over each completion's masked tokens."""
    import torch

    with torch.no_grad():
        logits = model(sequences).logits[:, start - 1 : -1].float()
    logps = torch.log_softmax(logits, dim=-1)
    taken = logps.gather(-1, sequences[:, start:].unsqueeze(-1)).squeeze(-1)
    return (taken * mask).sum(dim=1)


def kl_per_completion(
    trained: str,
    reference: str,
    prompts: Sequence[str],
    n: int = 8,
    max_new_tokens: int = 160,
    seed: int = 0,
) -> float:
    """KL(trained ‖ reference) in nats per completion, averaged over ``prompts`` (temperature 1:
    the distributions themselves)."""
    import torch

    torch.manual_seed(seed)
    policy, tokenizer = _load(trained)
    base, _ = _load(reference)
    per_prompt = []
    for prompt in prompts:
        sequences, start = _generate(policy, tokenizer, prompt, n, max_new_tokens, 1.0)
        mask = _completion_mask(sequences, start, tokenizer.eos_token_id)
        diff = _logprob(policy, sequences, start, mask) - _logprob(base, sequences, start, mask)
        per_prompt.append(float(diff.mean()))
    return statistics.fmean(per_prompt)


def sample(
    model_dir: str,
    prompt: str,
    n: int,
    max_new_tokens: int = 160,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """``n`` completions of ``prompt`` (special tokens dropped)."""
    import torch

    torch.manual_seed(seed)
    model, tokenizer = _load(model_dir)
    sequences, start = _generate(model, tokenizer, prompt, n, max_new_tokens, temperature)
    return [tokenizer.decode(s[start:], skip_special_tokens=True) for s in sequences]


def next_token_prob(model_dir: str, prompts: Sequence[str], token: str) -> list[float]:
    """P(``token``) right after each prompt; ``token`` must be a single token."""
    import torch

    model, tokenizer = _load(model_dir)
    (token_id,) = tokenizer.encode(token, add_special_tokens=False)
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            logits = model(ids).logits[0, -1].float()
            out.append(float(torch.softmax(logits, dim=-1)[token_id]))
    return out
