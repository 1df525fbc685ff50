"""``bestofk train``: the recorded verdicts train the next model, with TRL.

Three of the seed's families of post-training, all pushing the model toward
``p0(y|x)·exp(β·R(y|x))``:

- ``rsft`` (selection, RAFT/RSFT): SFT on the candidates that passed (``SFTTrainer``).
- ``dpo`` (pairwise): passed vs failed pairs (``DPOTrainer``) with an SFT term on the chosen
  (``loss_type=["sigmoid", "sft"]``): plain DPO lowers both log-probs when chosen and rejected
  share long prefixes (code), and on the demo model it broke the code family.
- ``grpo`` (on-policy RL): the recorded prompts with their verifiers, fresh samples each step,
  rewarded by a live bestofk's ``/verify`` (:class:`bestofk.tooling.reward.BestOfKReward`).

The datasets come from ``bestofk.tooling.records.export`` (its grouping, de-duplication and
exclusions), after two filters of our own: only the model's own samples (``source``: a ``/verify``
record's candidates came from a client), and no record scored only by an LLM judge (on the demo
model the judge prompts reuse the factorial and date questions, and its labels are noisy).

Defaults suit a small model on CPU and were measured on the demo model; every field of TRL's
``SFTConfig`` / ``DPOConfig`` / ``GRPOConfig`` can be set over them. The saved directory is what
``bestofk serve --model DIR`` serves: weights, tokenizer, the base's generation config, and
``use_cache: true`` (the Trainer writes false).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from bestofk.service.records.format import Record
from bestofk.tooling.records.export import ExportFormat, ExportOptions, export, reason_to_skip

Method = Literal["rsft", "dpo", "grpo"]
METHODS: tuple[Method, ...] = ("rsft", "dpo", "grpo")

# TRL 1.x turns bf16 on unless told not to and checkpoints activations by default (20 % slower
# on the demo model); on CPU both only cost. GRPOConfig defaults to lr 1e-6 and beta 0.
_COMMON: dict[str, Any] = {
    "bf16": False,
    "gradient_checkpointing": False,
    "learning_rate": 3e-4,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
}
DEFAULTS: dict[Method, dict[str, Any]] = {
    "rsft": {**_COMMON, "max_steps": 30, "per_device_train_batch_size": 16},
    "dpo": {
        **_COMMON,
        "max_steps": 30,
        "per_device_train_batch_size": 16,
        "loss_type": ["sigmoid", "sft"],
    },
    "grpo": {
        **_COMMON,
        "max_steps": 50,
        "num_generations": 8,
        "per_device_train_batch_size": 32,  # completions: 4 prompts x 8 generations per step
        "max_completion_length": 160,
        "temperature": 1.0,
        "beta": 0.04,
    },
}
"""TRL config fields per method; ``trl_args`` override them."""


class TrainError(ValueError):
    """The training cannot run as asked (no rows, an unknown TRL field, a bad value)."""


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """What to train, from which records, and how."""

    method: Method
    base: str
    """The model to start from (a path or a hub name)."""
    out: Path
    trl_args: Mapping[str, Any] = field(default_factory=dict)
    """Fields of the method's TRL config, over :data:`DEFAULTS`."""
    records: ExportOptions = field(default_factory=lambda: ExportOptions(format="rsft"))
    """Which records and how many rows per prompt, as ``bestofk export`` takes them (its
    ``format`` follows ``method``)."""
    skip_judge_only: bool = True
    """Leave out records whose only verifiers are LLM judges."""
    reward_url: str | None = None
    """``grpo``: the bestofk server whose ``/verify`` rewards the samples."""
    reward_profile: str | None = None
    reward_field: Literal["passed", "score"] = "passed"


@dataclass(slots=True)
class TrainResult:
    """What was trained on and how long it took."""

    method: Method
    rows: int
    prompts: int
    records: int
    used: int
    train_seconds: float
    out: Path
    config: dict[str, Any]
    reward_usage: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (also written as ``bestofk_train.json`` beside the model)."""
        return {
            "method": self.method,
            "rows": self.rows,
            "prompts": self.prompts,
            "records": self.records,
            "used": self.used,
            "train_seconds": round(self.train_seconds, 2),
            "config": self.config,
            "reward_usage": self.reward_usage,
        }


def parse_trl_args(pairs: Sequence[str], config_file: Path | None = None) -> dict[str, Any]:
    """TRL fields from a YAML/JSON mapping file, then ``key=value`` pairs over it. A value is
    read as JSON (``3e-4``, ``true``, ``["sigmoid","sft"]``), else kept as a string."""
    args: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text())
        if not isinstance(loaded, dict):
            raise TrainError(f"{config_file} must hold a mapping of TRL config fields")
        args.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TrainError(f"expected key=value, got {pair!r}")
        try:
            args[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            args[key.strip()] = value
    return args


def select(records: Iterable[Record], options: TrainOptions) -> Iterator[Record]:
    """The records whose labels training may trust (see the module docstring)."""
    for record in records:
        if options.method == "grpo" and reason_to_skip(record, options.records) is not None:
            continue  # the export applies these filters itself to the other methods' rows
        types = {spec.get("type") for spec in record.verifiers}
        if options.skip_judge_only and types and types <= {"judge"}:
            continue
        yield record


def grpo_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per distinct prompt: the prompt and its verifiers (JSON), first seen first."""
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        if not record.verifiers or record.prompt_key in rows:
            continue
        prompt = record.messages if record.messages is not None else record.prompt or ""
        rows[record.prompt_key] = {"prompt": prompt, "verifiers": json.dumps(record.verifiers)}
    return list(rows.values())


def dataset(
    records: Iterable[Record], options: TrainOptions
) -> tuple[list[dict[str, Any]], int, int]:
    """(rows, records read, records that passed the filters and went into the rows)."""
    read = 0

    def counted() -> Iterator[Record]:
        nonlocal read
        for record in records:
            read += 1
            yield record

    chosen = select(counted(), options)
    if options.method == "grpo":
        kept = [r for r in chosen if r.verifiers]
        return grpo_rows(kept), read, len(kept)
    fmt: ExportFormat = "rsft" if options.method == "rsft" else "dpo"
    result = export(chosen, replace(options.records, format=fmt))
    return result.rows, read, result.used


def train(records: Iterable[Record], options: TrainOptions) -> TrainResult:
    """Build the dataset, train with TRL, save a model bestofk serves."""
    rows, read, used = dataset(records, options)
    if not rows:
        raise TrainError(
            f"no {options.method} rows in the records ({read} read, {used} usable): "
            + (
                "dpo needs prompts with both passing and failing candidates"
                if options.method == "dpo"
                else "rsft needs passing candidates; grpo needs prompts with verifiers"
            )
        )
    if options.method == "grpo" and not options.reward_url:
        raise TrainError("grpo samples on-policy and needs a bestofk server: pass --reward-url")
    config_args = {**DEFAULTS[options.method], **options.trl_args}
    prompts = len({json.dumps(r["prompt"], sort_keys=True) for r in rows})

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(options.base)
    model = AutoModelForCausalLM.from_pretrained(options.base, dtype=torch.float32)
    config = _config(options.method, {"output_dir": str(options.out), **config_args})
    data = Dataset.from_list(rows)
    reward = None
    if options.method == "rsft":
        from trl import SFTTrainer

        trainer: Any = SFTTrainer(
            model=model, args=config, train_dataset=data, processing_class=tokenizer
        )
    elif options.method == "dpo":
        from trl import DPOTrainer

        trainer = DPOTrainer(
            model=model, args=config, train_dataset=data, processing_class=tokenizer
        )
    else:
        from trl import GRPOTrainer

        from bestofk.tooling.reward import BestOfKReward

        assert options.reward_url is not None  # checked above
        reward = BestOfKReward(
            options.reward_url, field=options.reward_field, profile=options.reward_profile
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
        )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    _save(trainer, tokenizer, options.base, options.out)
    result = TrainResult(
        method=options.method,
        rows=len(rows),
        prompts=prompts,
        records=read,
        used=used,
        train_seconds=seconds,
        out=options.out,
        config=config_args,
        reward_usage=dict(reward.usage) if reward is not None else None,
    )
    (options.out / "bestofk_train.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _config(method: Method, args: dict[str, Any]) -> Any:
    """The method's TRL config; an unknown field or a bad value is a :class:`TrainError`."""
    import trl

    cls = {"rsft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[method]
    try:
        return cls(**args)
    except TypeError as exc:  # an unknown keyword
        raise TrainError(f"{cls.__name__}: {exc}") from None
    except ValueError as exc:  # a value the config's own checks refuse
        raise TrainError(f"{cls.__name__}: {exc}") from None


def _save(trainer: Any, tokenizer: Any, base: str, out: Path) -> None:
    """Weights, tokenizer and the base's generation config; ``use_cache`` back on (the Trainer
    sets it false for training, and a served model would decode without a KV cache)."""
    from transformers import GenerationConfig

    model = trainer.model
    model.config.use_cache = True
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:  # the base has none: keep what the trainer wrote
        return
    # SFT and GRPO may add tokens to eos_token_id; serving stops where the base did.
    generation.save_pretrained(str(out))
