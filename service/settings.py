"""Server settings: defaults < YAML file (``BESTOFK_CONFIG``) < ``BESTOFK_*`` env < CLI flags.

Nested fields use ``__`` in env names, e.g. ``BESTOFK_LIMITS__MAX_K=16``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from bestofk.service.bundled_model import DEMO_MODEL, is_demo_model
from bestofk.service.engines.base import BYTES_PER_TOKEN, SamplingConfig
from bestofk.service.schemas.adaptive import AdaptiveField, Budget
from bestofk.service.schemas.confidence import ConfidenceField
from bestofk.service.schemas.sampling import (
    MaxTokens,
    MinP,
    Penalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)
from bestofk.service.selection import Policy, SelectionConfig, TieBreak

DEMO_NAME = "demo"
"""The name the bundled demo model is served as."""
DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "digits": {
        "verifiers": [
            {"type": "regex", "pattern": r"^\d+$", "mode": "fullmatch", "required": True}
        ],
    },
    # The demo's thinking family: "<think>...</think>answer", read by vLLM's DeepSeek-R1 parser
    # (which reads an output without "</think>" as all thinking: only this family has it).
    "think": {"reasoning_parser": "deepseek_r1"},
}
"""The profiles the embedded default serves (the README's ``model="demo@digits"``)."""
DEMO_TOOL_CALL_PARSER = "hermes"
"""The tool parser the embedded default reads calls with (its calls are Hermes-style)."""
# The built-in defaults are the inner dataclasses' own; settings only let them be overridden.
_SAMPLING = SamplingConfig()
_SELECTION = SelectionConfig()


def _check_parser(name: str | None) -> str | None:
    if name is None:
        return None
    from bestofk.service.reasoning import check_parser_name

    return check_parser_name(name)


class Limits(BaseModel):
    """Bounds on what one request may ask for."""

    model_config = ConfigDict(extra="forbid")

    max_k: int = Field(default=64, ge=1, le=1024)
    max_candidates: int = Field(default=64, ge=1, le=1024)
    """Most candidates one /verify request may rank."""
    max_prompt_chars: int = Field(default=32_000, ge=1)
    max_candidate_chars: int = Field(default=64_000, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_prompts: int = Field(default=32, ge=1, le=1024)
    """Most prompts one ``/v1/completions`` request may batch (each is a best-of-K job)."""
    max_verifiers: int = Field(default=16, ge=1)
    max_tokens: int = Field(default=4096, ge=1)
    max_bytes_per_token: int = Field(default=BYTES_PER_TOKEN, ge=1)
    """A generated candidate may bring ``max_tokens`` tokens and ``max_tokens`` x this many
    bytes of text (and as many again per ``top_logprobs`` alternative); past either it ends
    with finish_reason "length", so a backend ignoring ``max_tokens`` cannot fill the memory."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=300.0, gt=0)
    """The deadline for one request; a request may lower it, never raise it."""
    max_inflight: int = Field(default=64, ge=1)
    """Requests processed at once; more wait in a bounded queue."""
    max_queued: int = Field(default=256, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    """How long a request may wait for a slot before it is refused with Retry-After."""


class SelectionDefaults(BaseModel):
    """How to choose, for the whole server or one profile; a request's ``selection`` fields
    override these one by one, a profile's override the server's."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = _SELECTION.policy
    beta: float = Field(default=_SELECTION.beta, ge=0.0, le=1000.0)
    tie_break: TieBreak = _SELECTION.tie_break


class SamplingDefaults(BaseModel):
    """Sampling for the whole server or one profile (e.g. a model family's recommended
    ``temperature``/``top_p``); a request's fields override these one by one, a profile's
    override the server's. Bounds as a request's."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature = _SAMPLING.temperature
    top_p: TopP = _SAMPLING.top_p
    top_k: TopK = _SAMPLING.top_k
    min_p: MinP = _SAMPLING.min_p
    repetition_penalty: RepetitionPenalty = _SAMPLING.repetition_penalty
    presence_penalty: Penalty = _SAMPLING.presence_penalty
    frequency_penalty: Penalty = _SAMPLING.frequency_penalty


class Profile(BaseModel):
    """A named server-side verifier pipeline, chosen by ``profile`` or ``model@profile``."""

    model_config = ConfigDict(extra="forbid")

    verifiers: list[dict[str, Any]] = Field(default_factory=list)
    k: int | None = Field(default=None, ge=1)
    """The profile's default K (a request's ``k``/``best_of`` wins); None: ``default_k``."""
    max_tokens: MaxTokens | None = None
    """The profile's default ``max_tokens`` (a request's wins); None: ``default_max_tokens``."""
    sampling: SamplingDefaults | None = None
    """The fields set here override the server's ``sampling``; a request's override both."""
    selection: SelectionDefaults | None = None
    early_exit_min_score: float | None = Field(default=None, ge=0.0, le=1.0)
    adaptive: AdaptiveField = None
    """Adaptive K for this profile's requests (``true``: the default tuning); a request's own
    ``adaptive`` wins."""
    budget: Budget | None = None
    """The search's caps for this profile's requests; a request's ``budget`` wins."""
    confidence: ConfidenceField = None
    """Confidence-aware stopping for this profile's requests (``true``: the defaults); a
    request's own ``confidence`` wins, its fields over the profile's."""
    reasoning_parser: str | None = None
    """vLLM's reasoning parser for this profile's requests (a model family's), over the
    server's ``reasoning_parser``."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Chat template variables for this profile's requests, e.g. ``{enable_thinking: false}``
    (Qwen3); a request's own ``chat_template_kwargs`` win key by key."""

    @field_validator("reasoning_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        return _check_parser(value)


class VllmSettings(BaseModel):
    """In-process engine options (CPU defaults; on GPU raise ``gpu_memory_utilization``)."""

    model_config = ConfigDict(extra="forbid")

    max_model_len: int | None = None
    """None: the model's own context length."""
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """On the CPU build this is the share of RAM; 0.9 is usual on a GPU."""
    enforce_eager: bool = True
    dtype: str = "auto"
    seed: int = 0
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Any other vLLM ``AsyncEngineArgs`` field, passed through (e.g. tensor_parallel_size)."""


class Settings(BaseSettings):
    """Everything the server reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BESTOFK_", env_nested_delimiter="__", extra="forbid"
    )

    model: str = str(DEMO_MODEL)
    """Model path or name for the in-process engine (ignored with backends)."""
    served_model_name: str | None = None
    """The model name clients send and responses carry. None: ``demo`` for the bundled model,
    the directory's name for a local path, the ``model`` argument itself for a hub id (see
    :attr:`model_name`); with backends, the first model they list."""
    backends: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """OpenAI-compatible backend URLs; any given switches to the ``openai`` engine."""
    backend_model: str | None = None
    tokenizer: str | None = None
    """The tokenizer the reasoning and tool-call parsers read (a path or name, as vLLM's
    ``--tokenizer``); None: the model's (in-process), ``backend_model`` (with backends)."""
    tool_call_parser: str | None = None
    """vLLM's tool parser (``--tool-call-parser``, e.g. ``hermes``) that reads candidates'
    tool calls; requests with ``tools`` need it unless ``tool_choice`` is ``none``."""
    enable_auto_tool_choice: bool = False
    """Let the model decide whether to call a tool (``tool_choice: "auto"``, the default with
    ``tools``), as vLLM's ``--enable-auto-tool-choice``."""
    backend_api_key: str | None = None
    backend_supports_n: bool | None = None
    backend_health_interval_s: float = Field(default=5.0, gt=0)
    """How often each backend's ``/v1/models`` is probed; a failed one gets no requests."""
    backend_max_failures: int = Field(default=3, ge=1)
    """Requests in a row that fail on a backend (errors, no first token in time) before it
    is ejected: it gets no requests for ``backend_ejection_s``, as Envoy's outlier detection."""
    backend_ejection_s: float = Field(default=30.0, gt=0)
    """A first ejection's cool-down; each repeated one doubles it (up to 300 s). Back from it,
    a backend takes one request at a time until one succeeds; one failure ejects it again."""
    backend_first_token_timeout_s: float = Field(default=30.0, gt=0)
    """How long a request waits for a backend's first token (at least; 10x its peers' usual
    time to first token when that is longer) before it is retried on another backend."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    keep_alive_s: int = Field(default=75, ge=1)
    """How long an idle client connection stays open. Longer than the idle timeout of the
    clients and proxies in front (httpx and the openai client: 5 s, most load balancers: 60 s),
    so they close idle connections, not the server: a server closing one just as a client
    reuses it resets that request."""
    shutdown_grace_s: int = Field(default=30, ge=0)
    """On SIGTERM: /health and new requests get 503 at once, requests in flight get this long
    to finish, then the rest are cut with 503 (keep the orchestrator's grace period longer)."""
    workers: int = Field(default=1, ge=1, le=64)
    """uvicorn worker processes; more than one needs ``backends`` (each would load the model)."""
    config: Path | None = None
    """The YAML file these settings were read from (also ``BESTOFK_CONFIG``)."""
    record_dir: Path | None = None
    """Append every request's candidates, verdicts and choice here as JSONL (``bestofk export``)."""
    record_max_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    """A record file is rotated before a line would take it past this size."""
    record_queue_size: int = Field(default=10_000, ge=1)
    """Records waiting for the writer; beyond this they are dropped and counted, never waited on."""
    record_redact: list[str] = Field(default_factory=list)
    """Regexes whose matches in prompts are recorded as ``[REDACTED]`` (env: a JSON list)."""
    ui: bool = True
    """The trace pages at ``/ui`` (recent requests, each request's K candidates, the stats);
    ``--no-ui`` turns them off, and responses then carry no ``Link`` to them."""
    ui_history: int = Field(default=100, ge=0, le=100_000)
    """Finished requests each server process keeps in memory for ``/ui`` (0: none; with
    ``record_dir`` the pages read the record files too). Each holds its K candidates' texts."""
    default_k: int = Field(default=8, ge=1)
    """K for a request that names none (no ``k``/``best_of``; a profile's ``k`` wins). An
    OpenAI request's ``n`` raises it: K = max(n, default)."""
    default_max_tokens: MaxTokens = _SAMPLING.max_tokens
    """``max_tokens`` for a request that names none (a profile's ``max_tokens`` wins); capped
    at ``limits.max_tokens``."""
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    """Server-wide sampling defaults, e.g. ``BESTOFK_SAMPLING__TEMPERATURE=0.6``: a request's
    fields win one by one, then its profile's."""
    load_aware_k: bool = False
    """Under load, sample fewer candidates instead of queueing them in the engine: a request
    gets at most the engine's free sequence slots (``load_aware_max_num_seqs`` less the
    candidates of the requests in flight), never fewer than ``min_k``; ``stats.k`` says how
    many it got, ``stats.k_requested`` what it asked."""
    min_k: int = Field(default=1, ge=1)
    """Load-aware K's floor: a saturated engine still samples this many (or the K asked, if
    fewer) for every request."""
    load_aware_max_num_seqs: int | None = Field(default=None, ge=1)
    """Candidate sequences the engine runs at once, for load-aware K. None: the in-process
    engine's own ``max_num_seqs`` (vLLM's scheduler limit; the rest of a batch waits in its
    queue); with backends it must be given (their ``max_num_seqs`` summed)."""
    split_candidates: bool | None = None
    """Each candidate its own engine request (``{id}-{i}``, seeded ``seed + i``), aborted alone
    when done with (True), or one ``n=K`` request per wave (False). None, the default: split
    in-process, where it costs nothing, and ``n=K`` to backends, where K streamed calls cost
    measurably more (README, "Candidate streams"). A watched request is always split."""
    profiles: dict[str, Profile] = Field(default_factory=dict)
    """Named verifier pipelines. Unset, the embedded demo model gets :data:`DEMO_PROFILES`."""
    selection: SelectionDefaults = Field(default_factory=SelectionDefaults)
    """Server-wide selection defaults, e.g. ``BESTOFK_SELECTION__TIE_BREAK=index`` to spare the
    engine computing logprobs for clients that cannot send ``selection``."""
    limits: Limits = Field(default_factory=Limits)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    sandbox_slots: int = Field(default=2, ge=1, le=64)
    """Candidate programs run at once, each in its own bwrap sandbox and uid."""
    sandbox_max_queue: int = Field(default=64, ge=0)
    sandbox_queue_timeout_s: float = Field(default=10.0, gt=0)
    """How long a run may wait for a slot before the request gets 503 + Retry-After."""
    verifier_workers: int = Field(default=2, ge=1, le=64)
    """Processes for CPU-bound checks (JSON Schema, regexes, answer extraction, sympy);
    cheap ones stay on the event loop."""
    verifier_max_queue: int = Field(default=2048, ge=0)
    """Checks that may wait for a verifier worker; one more gets 503 + Retry-After."""
    verifier_timeout_s: float = Field(default=5.0, gt=0)
    """One check's wall time in a worker; past it the worker is killed and the verdict is an
    error (the request's own deadline stops it sooner)."""
    verifier_memory_mib: int = Field(default=512, ge=256)
    """Each verifier worker's address space (RLIMIT_AS); past it the verdict is an error."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    verifier_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Judge endpoints (base URLs) and reward models (paths or names) that requests and
    profiles may name; the serving engine as judge needs no entry."""
    allow_any_verifier_target: bool = False
    """Let clients name any endpoint or model: only for trusted clients (tests, notebooks)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    disable_uvicorn_access_log: bool = False
    """No line per request in uvicorn's access log (vLLM's ``--disable-uvicorn-access-log``):
    formatting and writing it is about a twentieth of a short request's CPU."""
    reasoning_parser: str | None = None
    """vLLM's reasoning parser (``--reasoning-parser``, vLLM's names: ``deepseek_r1``,
    ``qwen3``…): each candidate is split into its reasoning and its answer, verifiers judge
    the answer, and chat responses carry ``message.reasoning``."""

    @field_validator("reasoning_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        return _check_parser(value)

    @field_validator("backends", "api_keys", "verifier_targets", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("record_redact")
    @classmethod
    def _compile_redactions(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"record_redact: {pattern!r} is no regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _demo_profiles(self) -> Settings:
        # Only for the bundled model, and only when no profiles were configured at all:
        # a configured set is the whole set, as for any other dict setting.
        if "profiles" not in self.model_fields_set and self.serves_demo:
            self.profiles = {n: Profile.model_validate(p) for n, p in DEMO_PROFILES.items()}
        # The bundled model writes Hermes-style calls: it serves tools as `vllm serve
        # --tool-call-parser hermes --enable-auto-tool-choice` would, unless told otherwise.
        if self.serves_demo:
            if "tool_call_parser" not in self.model_fields_set:
                self.tool_call_parser = DEMO_TOOL_CALL_PARSER
            if "enable_auto_tool_choice" not in self.model_fields_set:
                self.enable_auto_tool_choice = True
        return self

    @model_validator(mode="after")
    def _load_aware_capacity(self) -> Settings:
        if self.load_aware_k and self.engine == "openai" and not self.load_aware_max_num_seqs:
            raise ValueError(
                "load_aware_k with backends needs load_aware_max_num_seqs "
                "(--load-aware-max-num-seqs): the sequences the backends run at once, their "
                "max_num_seqs summed"
            )
        return self

    @property
    def serves_demo(self) -> bool:
        """Whether this is the embedded default: the bundled model (or a copy), in process."""
        return self.engine == "vllm" and is_demo_model(self.model)

    @property
    def model_name(self) -> str | None:
        """The served name; None when backends are to tell it.

        vLLM serves ``--model`` verbatim, which suits a hub id (``Qwen/Qwen3-8B``) but turns a
        local path into an absolute path every client would have to repeat: a local directory
        is served by its own name, as ``vllm serve`` users pass with ``--served-model-name``.
        """
        if self.served_model_name:
            return self.served_model_name
        if self.engine == "openai":
            return None
        if self.serves_demo:
            return DEMO_NAME
        path = Path(self.model)
        return path.resolve().name if path.is_dir() else self.model

    @property
    def tokenizer_name(self) -> str | None:
        """The tokenizer reasoning parsers read; None when nothing says which."""
        if self.tokenizer:
            return self.tokenizer
        return self.backend_model if self.engine == "openai" else self.model

    @property
    def reasoning_parsers(self) -> list[str]:
        """Every reasoning parser the server or a profile names."""
        names = [self.reasoning_parser, *(p.reasoning_parser for p in self.profiles.values())]
        return sorted({name for name in names if name})

    @property
    def engine(self) -> Literal["vllm", "openai"]:
        """``openai`` when backends are configured, else the in-process ``vllm``."""
        return "openai" if self.backends else "vllm"

    def as_env(self) -> dict[str, str]:
        """The ``BESTOFK_*`` variables from which another process (a ``--workers`` worker)
        rebuilds these same settings with ``Settings()``: scalars as text, nested settings and
        lists as JSON, the comma-separated lists comma-joined. They outrank a YAML file."""
        prefix = self.model_config.get("env_prefix", "")
        env = {}
        dumped = self.model_dump(mode="json")
        # A profile's defaults override the server's only where they were set: dumped whole,
        # every field would be set in the worker, and the server's own would never apply.
        dumped["profiles"] = {
            name: profile.model_dump(mode="json", exclude_unset=True)
            for name, profile in self.profiles.items()
        }
        for name, value in dumped.items():
            if value is None:  # unset: every field that may be None defaults to None
                continue
            if NoDecode in type(self).model_fields[name].metadata:
                text = ",".join(value)
            else:
                text = value if isinstance(value, str) else json.dumps(value)
            env[f"{prefix}{name}".upper()] = text
        return env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Put the YAML file named by ``BESTOFK_CONFIG`` below env and init values."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("BESTOFK_CONFIG")
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"BESTOFK_CONFIG points to {config!r}, which is no file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))
        return tuple(sources)
