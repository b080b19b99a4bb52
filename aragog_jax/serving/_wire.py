"""Messages on the wire: msgspec Structs with encoders and decoders built once.

Two protocols meet here: the OpenAI chat-completions protocol offered by the front door
(``model = "workflow:<name>"``; the engine side of it is in :mod:`aragog_jax.engines`),
and the workflow-run protocol of ``POST /v1/workflows/{name}/runs``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# --- OpenAI chat completions (front door) ----------------------------------------------


class ContentPart(msgspec.Struct, frozen=True):
    type: str = "text"
    text: str = ""


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class FrontChatRequest(msgspec.Struct, frozen=True):
    """``POST /v1/chat/completions`` at the front door. Unknown OpenAI fields are ignored."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    user: str | None = None


# --- Workflow runs ---------------------------------------------------------------------


class RunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/workflows/{name}/runs``."""

    input: Annotated[str, msgspec.Meta(min_length=1)]
    stream: bool = False
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None  # capped by the server's
    replay: bool = False  # include the scheduling rounds (round-replay JSON) in the receipt


class Attempt(msgspec.Struct, frozen=True):
    """One failed try of a stage on an engine (the stage was rescheduled after it)."""

    model: str
    engine: str
    error: str


class StageReceipt(msgspec.Struct, frozen=True):
    stage: str
    model: str
    engine: str
    queue_s: float  # ready -> dispatched (meta-queue time)
    run_s: float  # dispatched -> engine reply
    prompt_tokens: int = 0
    completion_tokens: int = 0
    round_id: int = -1  # the scheduling round that placed the stage
    failed_attempts: list[Attempt] = []
    engine_calls: int = 1  # chat calls the stage made (a stage function may make several)


class RoutingReceipt(msgspec.Struct, frozen=True):
    """How much routing the run waited for (routing overlapped with queueing).

    A router on the event loop routes before the run is queued: always complete, no
    budget. A router off the loop (``in_thread``) routes while the run waits in the
    meta-queue: its stages wait for the router at most ``budget_s``, then run with the
    configurations admitted so far (``c_max`` at least) once they reach the head of the
    queue, and routing stops at the first dispatch.
    """

    complete: bool  # every configuration was scored before the run's first stage ran
    fraction: float  # share of the configurations scored when the mask was fixed
    used_s: (
        float  # arrival -> mask fixed (routing complete or first dispatch); on the loop: the call
    )
    admitted: int  # configurations admitted in the set the run used (c_max included)
    budget_s: float | None = (
        None  # how long its stages could wait for the router (None: on the loop)
    )


class Receipt(msgspec.Struct, frozen=True):
    workflow: str
    num_configs: int
    num_admitted: int  # configurations the router admitted for this input (the set used)
    router: str  # "trained" or "admit-all"
    routing_s: float
    total_s: float
    stages: list[StageReceipt]
    configuration: dict[str, str] = {}  # stage -> model actually used
    failovers: int = 0
    rounds: list[Any] = []  # round-replay dumps (only when requested)
    routing: RoutingReceipt | None = None


class RunResponse(msgspec.Struct, frozen=True):
    id: str
    workflow: str
    output: str
    receipt: Receipt


class StageEvent(msgspec.Struct, frozen=True, tag="stage", tag_field="event"):
    id: str
    stage: str
    output: str
    receipt: StageReceipt


class DeltaEvent(msgspec.Struct, frozen=True, tag="delta", tag_field="event"):
    """The next piece of the output stage's text, as its engine produced it."""

    id: str
    stage: str
    text: str


class DoneEvent(msgspec.Struct, frozen=True, tag="done", tag_field="event"):
    id: str
    output: str
    receipt: Receipt


class ErrorEvent(msgspec.Struct, frozen=True, tag="error", tag_field="event"):
    id: str
    status: int
    error: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    code: int
    field: str | None = None


class WorkflowInfo(msgspec.Struct, frozen=True):
    name: str
    description: str
    stages: list[str]
    num_configs: int
    router: Literal["trained", "admit-all"]
    model: str  # the name to use with /v1/chat/completions


ENCODER = msgspec.json.Encoder()
RUN_REQUEST_DECODER = msgspec.json.Decoder(RunRequest)
FRONT_CHAT_DECODER = msgspec.json.Decoder(FrontChatRequest)


#: The message of every 500 the front door answers (the details go to the server log only).
INTERNAL_ERROR_MESSAGE = "internal server error (details are in the server log)"


def error_body(message: str, kind: str, code: int, field: str | None = None) -> bytes:
    """The one JSON error shape of the front door: ``{"error": {"message", "type", "code", "field"}}``."""
    return ENCODER.encode(
        ErrorBody(ErrorDetail(message=message, type=kind, code=code, field=field))
    )
