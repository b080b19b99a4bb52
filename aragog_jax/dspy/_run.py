"""Run the stages of a traced DSPy program on the engines the scheduler chose.

Each stage is a stage function (``async def fn(stage, model, lm, state)``, see
:mod:`aragog_jax.engines.stages`) that calls the program's own predictor with a
``dspy.LM`` whose engine is the runner's ``lm``: DSPy renders its prompt (signature,
instructions, demos, adapter) and parses the reply as it always does, while the call goes
to the engine the scheduler placed the stage on, through the runner, so the receipt counts
it, failover works and the labeller's cache holds it. The engine is called greedily
(temperature 0) with the runner's per-call seed; a predictor's own ``max_tokens`` caps its
reply, else the traced workflow's ``max_tokens``.

Stage outputs travel between stages as text: a call with one ``str`` output field gives
that text; any other gives a JSON object of its output fields. Downstream stages parse it
back into the fields' types (pydantic validation against the signature).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

import dspy
from aragog_jax._imports import load_callable
from aragog_jax.dspy._program import json_object, parse_input, program_fingerprint
from aragog_jax.dspy._trace import TracedCall, TracedProgram
from aragog_jax.errors import (
    AragogError,
    ProgramTraceError,
    SpecError,
    StageFunctionError,
    UpstreamError,
)
from dspy.lm15 import Message, Response, TextPart, Usage

#: The format tag of the trace a generated stages module holds.
TRACE_FORMAT = "aragog-dspy-trace/1"

_programs: dict[str, dspy.Module] = {}
_programs_lock = threading.Lock()


def load_program(ref: str, base: Path | None = None) -> dspy.Module:
    """``module:name`` or ``path/to/file.py:name`` -> the program (a ``dspy.Module``
    instance, or a class / function that returns one when called without arguments).

    A relative file path is relative to ``base`` when given. Loaded once per process
    and reference.
    """
    mod, sep, name = ref.rpartition(":")
    if sep and mod.endswith(".py") and base is not None and not Path(mod).is_absolute():
        ref = f"{(base / mod).resolve()}:{name}"
    with _programs_lock:
        if ref in _programs:
            return _programs[ref]
        obj = load_callable(ref, f"DSPy program {ref!r}", "my_programs:program")
        if not isinstance(obj, dspy.Module):
            try:
                obj = obj()
            except Exception as exc:  # noqa: BLE001 - the user's factory: name it, keep the cause
                raise AragogError(
                    f"DSPy program {ref!r}: calling it raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(obj, dspy.Module):
                raise AragogError(
                    f"DSPy program {ref!r}: expected a dspy.Module (or a class/function returning "
                    f"one), got {type(obj).__name__}"
                )
        _programs[ref] = obj
        return obj


def encode_outputs(call: TracedCall, prediction: Any, signature: type[dspy.Signature]) -> str:
    """A call's prediction as the stage's output text (see the module docstring)."""
    fields = call.output_fields
    if len(fields) == 1 and signature.output_fields[fields[0]].annotation is str:
        return str(prediction[fields[0]])
    from dspy.predict.predict import serialize_object

    return json.dumps(
        {f: serialize_object(prediction[f]) for f in fields}, ensure_ascii=False, default=str
    )


def decode_outputs(call: TracedCall, text: str, signature: type[dspy.Signature]) -> dict[str, Any]:
    """The inverse of :func:`encode_outputs`: the stage's output text -> typed field values."""
    fields = call.output_fields
    if len(fields) == 1 and signature.output_fields[fields[0]].annotation is str:
        return {fields[0]: text}
    try:
        obj = json_object(text, fields)
    except ValueError as exc:
        raise StageFunctionError(f"stage {call.stage!r}: its output: {exc}") from exc
    out = {}
    for f in fields:
        try:
            out[f] = pydantic.TypeAdapter(signature.output_fields[f].annotation).validate_python(
                obj[f]
            )
        except pydantic.ValidationError as exc:
            raise StageFunctionError(
                f"stage {call.stage!r}: output field {f!r}: {exc.errors()[0]['msg']}"
            ) from exc
    return out


def request_messages(request) -> list[dict[str, str]]:
    """An lm15 request (DSPy's rendered prompt) as OpenAI chat messages (text parts)."""
    out = []
    if request.system is not None:
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(getattr(p, "text", "") or "" for p in request.system)
        )
        out.append({"role": "system", "content": system})
    for m in request.messages:
        text = m.text
        if text is None:
            raise StageFunctionError(
                f"a DSPy {m.role} message holds no text (images, files and tool calls are not supported)"
            )
        out.append({"role": m.role, "content": text})
    return out


class _StageEngine:
    """The async engine of a stage's ``dspy.LM``: forwards DSPy's messages to the runner's ``lm``."""

    def __init__(self, lm, max_tokens: int):
        self.lm = lm
        self.max_tokens = max_tokens
        self.failed: UpstreamError | None = None  # the engine error that ended this stage

    async def complete(self, request) -> Response:
        if self.failed is not None:  # DSPy's adapter fallback retries: not on a failed engine
            raise self.failed
        try:
            text = await self.lm(
                request_messages(request), max_tokens=request.config.max_tokens or self.max_tokens
            )
        except UpstreamError as exc:
            self.failed = exc
            raise
        last = self.lm.last
        finish = "length" if last is not None and last.finish_reason == "length" else "stop"
        usage = (
            Usage(input_tokens=last.prompt_tokens, output_tokens=last.completion_tokens)
            if last is not None
            else Usage()
        )
        return Response(
            id=None,
            model=self.lm.model,
            message=Message.assistant((TextPart(text),)),
            finish_reason=finish,
            usage=usage,
        )

    def stream(self, request):
        raise StageFunctionError("streaming DSPy predictors are not supported in stage functions")

    async def aclose(self) -> None:
        pass


class _SyncRefused:
    """The sync engine slot of a stage's ``dspy.LM``: stage functions call predictors
    with ``acall``; a synchronous call would block the server's event loop."""

    def complete(self, request):
        raise StageFunctionError(
            "a DSPy stage calls its predictor asynchronously; a synchronous LM call reached it"
        )

    def stream(self, request):
        raise StageFunctionError(
            "a DSPy stage calls its predictor asynchronously; a synchronous LM call reached it"
        )

    def close(self) -> None:
        pass


class ProgramStages:
    """The stage functions of one traced program (what a generated stages module holds)."""

    def __init__(
        self, program: dspy.Module, traced: TracedProgram, *, max_tokens: int, ref: str = ""
    ):
        self.program = program
        self.traced = traced
        self.max_tokens = max_tokens
        self.ref = ref
        predictors = dict(program.named_predictors())
        self.calls = {c.stage: c for c in traced.calls}
        self.predictors = {}
        for c in traced.calls:
            if c.predictor not in predictors:
                raise SpecError(
                    f"DSPy program {ref!r} has no predictor {c.predictor!r} (stage {c.stage!r}); re-run the export"
                )
            self.predictors[c.stage] = predictors[c.predictor]

    @classmethod
    def from_trace(cls, trace: Mapping, base: str | Path) -> ProgramStages:
        """Load the program a trace names and check it is the program that was traced.

        Args:
          trace: the dict a generated stages module holds (``TRACE``).
          base: that module's file (relative program paths are relative to its folder).

        Raises:
          SpecError: wrong format, the program cannot be loaded, or it changed since the
            export (its predictors' names, signatures or demos).
        """
        if trace.get("format") != TRACE_FORMAT:
            raise SpecError(
                f"{base}: TRACE format {trace.get('format')!r}, expected {TRACE_FORMAT!r}; re-run the export"
            )
        ref = trace["program"]
        try:
            program = load_program(ref, Path(base).parent)
        except AragogError as exc:
            raise SpecError(str(exc)) from exc
        traced = TracedProgram.load(trace)
        now = program_fingerprint(program)
        if now != traced.fingerprint:
            raise SpecError(
                f"DSPy program {ref!r} changed since it was exported (its predictors, signatures or demos; fingerprint "
                f"{traced.fingerprint} -> {now}): re-run python -m aragog_jax.dspy export"
            )
        return cls(program, traced, max_tokens=int(trace.get("max_tokens", 1024)), ref=ref)

    def stage_lm(self, model: str, engine: _StageEngine) -> dspy.LM:
        """A ``dspy.LM`` whose calls go through ``engine`` (the runner's ``lm``)."""
        return dspy.LM(
            f"aragog/{model}",
            engine=_SyncRefused(),
            async_engine=engine,
            cache=False,
            num_retries=0,
        )

    def inputs_for(self, stage: str, text: str, upstream: Mapping[str, str]) -> dict[str, Any]:
        """The keyword arguments of ``stage``'s predictor for this request."""
        call = self.calls[stage]
        try:
            args = parse_input(text, self.traced.arguments)
        except ProgramTraceError as exc:
            raise StageFunctionError(str(exc)) from exc
        outputs = {}
        for up in call.upstream:
            if up not in upstream:
                raise StageFunctionError(
                    f"stage {stage!r}: the output of upstream stage {up!r} is missing"
                )
            outputs[up] = decode_outputs(
                self.calls[up], upstream[up], self.predictors[up].signature
            )
        return {f: b.resolve(args, outputs) for f, b in call.inputs.items()}

    async def run(self, stage: str, model: str, lm, state) -> str:
        """Run ``stage``'s predictor for this request on the chosen engine; its output text."""
        kwargs = self.inputs_for(stage, state.input, state.outputs)
        predictor = self.predictors[stage]
        engine = _StageEngine(lm, self.max_tokens)
        try:
            # No trace or history: DSPy's default global trace list and the LM histories
            # would keep every call of a long-running server (up to 10,000 each).
            with dspy.context(trace=None, disable_history=True):
                prediction = await predictor.acall(lm=self.stage_lm(model, engine), **kwargs)
        except Exception:
            if (
                engine.failed is not None
            ):  # DSPy wrapped the engine error: re-raise it, so the stage fails over
                raise engine.failed from None
            raise
        return encode_outputs(self.calls[stage], prediction, predictor.signature)
