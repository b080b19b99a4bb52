"""msgspec Structs describing models, engines, workflows and fleets.

These are plain data. Cross-reference checks (unknown stage names, cycles, unknown
models) happen in :mod:`aragog_jax.spec._load`, which knows which file a struct came
from and can name it in errors.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ModelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model card: the architecture numbers that drive FLOPs and KV-cache size."""

    name: Name
    family: Name
    num_params: PosInt  # total parameters
    num_layers: PosInt
    hidden_size: PosInt
    num_attention_heads: PosInt
    num_kv_heads: PosInt
    head_dim: PosInt
    intermediate_size: PosInt = 1
    vocab_size: PosInt = 1
    source: str = ""  # where the numbers come from (model config URL)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token at 16-bit precision (K and V, every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


class ModelCatalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``profiles/models.toml``: model cards plus named families (model pools)."""

    model: list[ModelSpec]
    families: dict[str, list[str]] = {}


class StageSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One LLM call of a workflow.

    ``models`` lists candidate model names; empty means "every model of the pool the
    space is built for" (the family chosen on the command line). ``same_model_as`` ties
    this stage to another stage's choice (the paper's constrained-space ablation).

    ``function`` (optional) runs the stage as a Python coroutine instead of one chat call
    with the rendered ``prompt``: ``module:function`` or ``path/to/file.py:function``
    (relative to the workflow file) naming ``async def f(stage, model, lm, state) ->
    str``; see :mod:`aragog_jax.engines.stages`.
    """

    name: Name
    prompt: str
    input_tokens: NonNegInt
    output_tokens: NonNegInt
    upstream: list[Name] = []
    models: list[Name] = []
    same_model_as: str = ""
    function: str = ""


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fixed DAG of stages. Stage order in the file is the tie-break order everywhere."""

    name: Name
    stage: list[StageSpec]
    description: str = ""
    dataset: str = ""  # the benchmark this workflow is evaluated on
    metric: str = ""
    accuracy_tolerance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    # Accuracy of c_max per family that the synthetic generator calibrates to.
    target_accuracy: dict[str, Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]] = {}

    @property
    def stages(self) -> list[StageSpec]:
        return self.stage

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stage]


class CurvePoint(msgspec.Struct, frozen=True, array_like=True):
    concurrency: NonNegInt
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0)]


class EngineProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Performance of one model on one hardware setup.

    ``curve`` is generated tokens/s at n concurrent sequences (linear interpolation,
    flat past the last point). ``decode_*`` give the iteration time model
    ``t(b, ctx) = decode_base_s + decode_per_seq_s * b + decode_per_ctx_token_s * ctx``
    where ``ctx`` is the total context tokens of the running batch. ``kind`` is
    ``"derived"`` (formula, see profiles/README.md), ``"fitted"`` (formula fitted to
    published measurements of this engine) or ``"measured"`` (profiler).
    """

    model: Name
    hardware: Name
    tensor_parallel: PosInt
    kind: Literal["derived", "fitted", "measured"]
    saturation_batch: PosInt
    kv_capacity_tokens: PosInt
    prefill_tokens_per_s: PosFloat
    decode_base_s: Annotated[float, msgspec.Meta(ge=0.0)]
    decode_per_seq_s: Annotated[float, msgspec.Meta(ge=0.0)]
    decode_per_ctx_token_s: Annotated[float, msgspec.Meta(ge=0.0)]
    curve: list[CurvePoint]
    num_gpus: PosInt = 1
    ttft_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    itl_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    engine_version: str = ""
    date: str = ""
    notes: str = ""


class EngineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A running (or emulated) OpenAI-compatible engine serving one model."""

    name: Name
    model: Name
    url: str = ""  # empty: emulated on loopback by the server
    hardware: str = "H100-80GB"
    tensor_parallel: PosInt = 1
    profile: str = ""  # path to an EngineProfile TOML, relative to the fleet file
    served_model_name: str = ""  # model name the engine expects; default: model
    kind: Literal["vllm", "sglang", "emulated", "openai"] = "vllm"


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    max_queue: PosInt = 1024
    request_deadline_s: PosFloat = 120.0
    max_body_bytes: PosInt = 1 << 20
    engine_timeout_s: PosFloat = 60.0
    metrics_poll_s: PosFloat = 0.5
    api_keys: list[str] = []
    api_keys_env: str = ""  # name of an environment variable holding comma-separated keys
    time_scale: PosFloat = 1.0  # emulated engines: divide profile times by this
    # Front-door connections (aragog_jax.serving._conn): a request's line and headers must
    # arrive within header_timeout_s, its body within body_timeout_s; an idle keep-alive
    # connection closes after keepalive_timeout_s; more than max_connections open
    # connections are answered 503.
    header_timeout_s: PosFloat = 10.0
    body_timeout_s: PosFloat = 30.0
    keepalive_timeout_s: PosFloat = 30.0
    max_connections: PosInt = 4096


class FleetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Engines, workflows (paths) and router checkpoints (workflow name -> path)."""

    engine: list[EngineSpec]
    workflows: list[str]
    models: str = ""  # path to a model catalog; default: the shipped profiles/models.toml
    family: str = ""
    routers: dict[str, str] = {}
    server: ServerSettings = ServerSettings()
