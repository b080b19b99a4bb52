"""Trace a DSPy program into a fixed DAG of predictor calls.

The program runs once per example input (``dspy.settings.trace`` records every predictor
call with its inputs and prediction, in call order). Each call becomes a stage; where each
of its input fields came from becomes a :class:`Binding`:

* ``input``: a program argument, passed through unchanged;
* ``output``: an output field of an earlier call, passed through unchanged (equal value);
* ``template``: text the program formatted around such values (an f-string, a join);
  the fixed text between them must be the same on every example;
* ``const``: the same value on every example (a setting, a literal).

The calls' upstream stages (the DAG's edges) are exactly the calls their bindings read.
Anything else (a value computed from an upstream output in another way, a structure that
differs between examples: a loop, a branch that changes which predictors run) is refused
with :class:`~aragog_jax.errors.ProgramTraceError` naming the predictor.

The LM the program sees while tracing is either a *placeholder* (no engine: every output
field gets a typed value that is unique per call and example, so data flow is found
exactly and branches on outputs show up as divergence) or a real ``dspy.LM`` the caller
passes. Token counts: with a real LM, the engine's reported usage; with the placeholder,
an estimate of 4 characters per token of DSPy's rendered prompt (upstream outputs counted
at the ``output_tokens`` estimate, ``default_output_tokens``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import dspy
from aragog_jax.dspy._placeholder import TraceEngine
from aragog_jax.dspy._program import (
    parse_input,
    program_arguments,
    program_fingerprint,
    stage_names,
)
from aragog_jax.errors import ProgramTraceError

#: A value shorter than this is never read as embedded in a formatted text (too likely
#: to occur there by chance).
MIN_EMBED_CHARS = 4


# -- bindings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a value comes from: a program argument (``stage`` empty) or an output field."""

    stage: str  # "" for a program argument
    field: str

    def dump(self) -> dict:
        return (
            {"input": self.field} if not self.stage else {"stage": self.stage, "field": self.field}
        )

    def label(self) -> str:
        return f"input {self.field!r}" if not self.stage else f"{self.stage}.{self.field}"


@dataclass(frozen=True)
class Binding:
    """How one input field of a call is computed from the program inputs and upstream outputs."""

    kind: str  # "input" | "output" | "template" | "const"
    source: Source | None = None  # input / output
    parts: tuple[str, ...] = ()  # template: fixed text around the slots (len(slots) + 1 pieces)
    slots: tuple[Source, ...] = ()  # template
    value: Any = None  # const (JSON-able)

    def dump(self) -> dict:
        if self.kind in ("input", "output"):
            return self.source.dump()
        if self.kind == "template":
            return {"template": list(self.parts), "slots": [s.dump() for s in self.slots]}
        return {"const": self.value}

    @staticmethod
    def load(d: dict) -> Binding:
        if "input" in d:
            return Binding("input", Source("", d["input"]))
        if "stage" in d:
            return Binding("output", Source(d["stage"], d["field"]))
        if "template" in d:
            slots = tuple(
                Source(s.get("stage", ""), s.get("input") or s["field"]) for s in d["slots"]
            )
            return Binding("template", parts=tuple(d["template"]), slots=slots)
        return Binding("const", value=d["const"])

    def sources(self) -> tuple[Source, ...]:
        return (self.source,) if self.source is not None else self.slots

    def resolve(self, inputs: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> Any:
        def get(s: Source) -> Any:
            return inputs[s.field] if not s.stage else outputs[s.stage][s.field]

        if self.kind in ("input", "output"):
            return get(self.source)
        if self.kind == "template":
            text = self.parts[0]
            for slot, part in zip(self.slots, self.parts[1:], strict=True):
                text += str(get(slot)) + part
            return text
        return self.value


@dataclass
class TracedCall:
    """One predictor call of the traced program: a stage of the workflow."""

    stage: str  # the stage name
    predictor: str  # the predictor's name in program.named_predictors()
    occurrence: int  # 0 for its first call in a run, 1 for the second, ...
    inputs: dict[str, Binding]
    output_fields: list[str]
    input_tokens: int
    output_tokens: int

    @property
    def upstream(self) -> list[str]:
        ups: list[str] = []
        for b in self.inputs.values():
            for s in b.sources():
                if s.stage and s.stage not in ups:
                    ups.append(s.stage)
        return ups

    def dump(self) -> dict:
        return {
            "stage": self.stage,
            "predictor": self.predictor,
            "occurrence": self.occurrence,
            "upstream": self.upstream,
            "inputs": {k: b.dump() for k, b in self.inputs.items()},
            "outputs": self.output_fields,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    @staticmethod
    def load(d: dict) -> TracedCall:
        return TracedCall(
            stage=d["stage"],
            predictor=d["predictor"],
            occurrence=int(d["occurrence"]),
            inputs={k: Binding.load(v) for k, v in d["inputs"].items()},
            output_fields=list(d["outputs"]),
            input_tokens=int(d["input_tokens"]),
            output_tokens=int(d["output_tokens"]),
        )


@dataclass
class TracedProgram:
    """The DAG a DSPy program runs, found by tracing it on example inputs."""

    arguments: list[str]  # the program's forward() parameters
    calls: list[TracedCall]
    fingerprint: str  # program_fingerprint() when traced
    num_examples: int
    token_source: str  # "usage" (a real LM) or "estimate" (the placeholder)
    notes: list[str] = field(default_factory=list)

    def dump(self) -> dict:
        return {
            "arguments": self.arguments,
            "fingerprint": self.fingerprint,
            "num_examples": self.num_examples,
            "token_source": self.token_source,
            "calls": [c.dump() for c in self.calls],
        }

    @staticmethod
    def load(d: dict) -> TracedProgram:
        return TracedProgram(
            arguments=list(d["arguments"]),
            calls=[TracedCall.load(c) for c in d["calls"]],
            fingerprint=d["fingerprint"],
            num_examples=int(d["num_examples"]),
            token_source=d["token_source"],
        )


# -- tracing --------------------------------------------------------------------------------


@dataclass
class _Run:
    names: list[str]  # predictor name per call
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    tokens: list[tuple[int, int]]  # (input, output) per call


def _run_once(
    program: dspy.Module,
    kwargs: dict,
    lm: dspy.BaseLM,
    engine: TraceEngine,
    names_of: dict[int, str],
) -> _Run:
    engine.usage = []
    trace: list = []
    with dspy.context(lm=lm, trace=trace, disable_history=True):
        program(**kwargs)
    names, ins, outs = [], [], []
    for pred, inputs, prediction in trace:
        if id(pred) not in names_of:
            raise ProgramTraceError(
                f"the program called a predictor that is not among its named_predictors(): {pred!r}"
            )
        names.append(names_of[id(pred)])
        ins.append(dict(inputs))
        outs.append({k: prediction[k] for k in pred.signature.output_fields})
    tokens = [[0, 0] for _ in names]
    for index, tin, tout in engine.usage:
        if index < len(tokens):
            tokens[index][0] += tin
            tokens[index][1] += tout
    return _Run(names, ins, outs, [tuple(t) for t in tokens])


def _check_same_structure(runs: list[_Run], examples: list[str]) -> None:
    first = runs[0].names
    for e, run in enumerate(runs[1:], start=2):
        for i in range(max(len(first), len(run.names))):
            a = first[i] if i < len(first) else None
            b = run.names[i] if i < len(run.names) else None
            if a == b:
                continue
            where = f"after predictor {first[i - 1]!r} (call {i})" if i else "at the first call"
            if a is not None and b is not None:
                what = f"call {i + 1} runs predictor {a!r} on example 1 but predictor {b!r} on example {e}"
            elif b is None:
                what = (
                    f"example 1 goes on to predictor {a!r} (call {i + 1}) where example {e} stops"
                )
            else:
                what = (
                    f"example {e} goes on to predictor {b!r} (call {i + 1}) where example 1 stops"
                )
            raise ProgramTraceError(
                f"the program's structure depends on its input: the traces diverged {where}: {what} "
                f"(examples {examples[0][:40]!r} and {examples[e - 1][:40]!r}); a loop or a branch that changes which "
                "predictors run cannot be served as a fixed workflow"
            )


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - an odd __eq__: not the same
        return False


def _embed(
    value: str, sources: list[tuple[Source, str]]
) -> tuple[tuple[str, ...], tuple[Source, ...]] | None:
    """``value`` as fixed text around source strings (longest first, leftmost), or None."""
    cands = sorted((s for s in sources if len(s[1]) >= MIN_EMBED_CHARS), key=lambda s: -len(s[1]))
    parts, slots, rest = [], [], value
    while True:
        best = None
        for src, text in cands:
            pos = rest.find(text)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, src, text)
        if best is None:
            break
        pos, src, text = best
        parts.append(rest[:pos])
        slots.append(src)
        rest = rest[pos + len(text) :]
    if not slots:
        return None
    parts.append(rest)
    return tuple(parts), tuple(slots)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _bind(
    field_name: str,
    predictor: str,
    stage: str,
    values: list[Any],
    pools: list[list[tuple[Source, Any]]],
) -> Binding:
    """The one binding that explains ``values[e]`` from ``pools[e]`` on every example e."""
    # Passed through: the sources equal to the value on every example, latest first.
    common = None
    for value, pool in zip(values, pools, strict=True):
        hits = [src for src, v in pool if _same(v, value)]
        common = hits if common is None else [s for s in common if s in hits]
    if common:
        src = common[0]
        return Binding("input" if not src.stage else "output", src)
    # Formatted text around sources, the same text on every example.
    if all(isinstance(v, str) for v in values):
        shapes = {
            _embed(v, [(s, x) for s, x in pool if isinstance(x, str)])
            for v, pool in zip(values, pools, strict=True)
        }
        if len(shapes) == 1 and None not in shapes:
            parts, slots = shapes.pop()
            return Binding("template", parts=parts, slots=slots)
    if all(_same(v, values[0]) for v in values) and _jsonable(values[0]):
        return Binding("const", value=values[0])
    raise ProgramTraceError(
        f"predictor {predictor!r} (stage {stage!r}): input field {field_name!r} is computed by the program in a way "
        "the tracer cannot replay: it is not a program input, an upstream output passed through, text formatted "
        "around those, or the same constant on every example"
    )


def trace_program(
    program: dspy.Module,
    examples: list[str],
    *,
    lm: dspy.BaseLM | None = None,
    default_output_tokens: int = 128,
) -> TracedProgram:
    """Run ``program`` on each example and return the DAG of its predictor calls.

    Args:
      program: a ``dspy.Module``.
      examples: request inputs (the text for a one-parameter program, else a JSON object).
        Two or more are needed to check that the structure does not depend on the input.
      lm: a real LM to trace with (token counts from its usage); None: the placeholder.
      default_output_tokens: the output-token estimate of every call with the placeholder.

    Raises:
      ProgramTraceError: the structure differs between examples (naming the predictor where
        the trace diverged), an input field cannot be replayed, or the program failed.
    """
    if not examples:
        raise ProgramTraceError("at least one example input is needed to trace the program")
    if not isinstance(program, dspy.Module):
        raise ProgramTraceError(f"expected a dspy.Module, got {type(program).__name__}")
    arguments = program_arguments(program)
    names_of = {id(p): n for n, p in program.named_predictors()}
    if not names_of:
        raise ProgramTraceError(
            f"{type(program).__name__} has no predictors (dspy.Predict and modules wrapping one)"
        )
    engine = TraceEngine(lm)
    trace_lm = dspy.LM("aragog-trace/program", engine=engine, cache=False, num_retries=0)
    runs = []
    # A predictor's own LM (predictor.lm) would win over the context's: set it aside, so
    # the trace never reaches an engine the caller did not pass.
    own_lms = {name: p.lm for name, p in program.named_predictors()}
    try:
        for _, p in program.named_predictors():
            p.lm = None
        for e, text in enumerate(examples):
            engine.example = e
            kwargs = parse_input(text, arguments, where=f"example {e + 1}")
            try:
                runs.append(_run_once(program, kwargs, trace_lm, engine, names_of))
            except ProgramTraceError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's program: name the example, keep the cause
                raise ProgramTraceError(
                    f"the program raised on example {e + 1}: {type(exc).__name__}: {exc}"
                ) from exc
            if not runs[-1].names:
                raise ProgramTraceError(f"the program called no predictor on example {e + 1}")
    finally:
        for name, p in program.named_predictors():
            p.lm = own_lms[name]
    _check_same_structure(runs, examples)

    stages = stage_names(runs[0].names)
    counts: dict[str, int] = {}
    calls: list[TracedCall] = []
    for i, (pname, stage) in enumerate(zip(runs[0].names, stages, strict=True)):
        occurrence = counts.get(pname, 0)
        counts[pname] = occurrence + 1
        pools = []
        for e, run in enumerate(runs):
            pool = [(Source("", a), v) for a, v in parse_input(examples[e], arguments).items()]
            for j in range(i - 1, -1, -1):  # latest upstream first
                pool += [(Source(stages[j], f), v) for f, v in run.outputs[j].items()]
            pools.append(pool)
        fields = list(runs[0].inputs[i])
        for e, run in enumerate(runs[1:], start=2):
            if list(run.inputs[i]) != fields:
                raise ProgramTraceError(
                    f"the trace diverged at predictor {pname!r} (stage {stage!r}): it got input fields {fields} on "
                    f"example 1 but {list(run.inputs[i])} on example {e}"
                )
        inputs = {
            f: _bind(f, pname, stage, [run.inputs[i][f] for run in runs], pools) for f in fields
        }
        out_fields = list(runs[0].outputs[i])
        if lm is not None:
            tin = round(sum(run.tokens[i][0] for run in runs) / len(runs))
            tout = round(sum(run.tokens[i][1] for run in runs) / len(runs))
        else:
            tin, tout = (
                round(sum(run.tokens[i][0] for run in runs) / len(runs)),
                default_output_tokens,
            )
        calls.append(TracedCall(stage, pname, occurrence, inputs, out_fields, tin, tout))
    if (
        lm is None
    ):  # upstream outputs stand in the prompt at their placeholder's length: count them at the estimate
        by_stage = {c.stage: c for c in calls}
        for c in calls:
            c.input_tokens += sum(by_stage[u].output_tokens for u in c.upstream)
    notes = (
        []
        if len(examples) > 1
        else ["traced on one example: the structure was not checked against a second input"]
    )
    return TracedProgram(
        arguments,
        calls,
        program_fingerprint(program),
        len(examples),
        "usage" if lm is not None else "estimate",
        notes,
    )
