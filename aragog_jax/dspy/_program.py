"""A DSPy program's interface as the tracer and the stage runner see it: its arguments,
how a request's input text maps onto them, its fingerprint, its calls' stage names."""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

import dspy
from aragog_jax.errors import ProgramTraceError


def program_arguments(program: dspy.Module) -> list[str]:
    """The names of ``program.forward``'s parameters (its inputs)."""
    # From the class: reading ``program.forward`` on the instance makes DSPy warn.
    params = list(inspect.signature(type(program).forward).parameters.values())[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params) or not names:
        raise ProgramTraceError(
            f"{type(program).__name__}.forward must take named parameters (e.g. forward(self, question)); "
            f"got ({', '.join(str(p) for p in params)})"
        )
    return names


def json_object(text: str, keys: list[str]) -> dict[str, Any]:
    """``text`` as a JSON object with exactly ``keys``; ValueError saying what it is instead."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object with keys {keys}, got {text[:60]!r}") from exc
    if not isinstance(obj, dict) or set(obj) != set(keys):
        raise ValueError(
            f"expected a JSON object with keys {keys}, got "
            f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}"
        )
    return obj


def parse_input(text: str, arguments: list[str], where: str = "input") -> dict[str, Any]:
    """A request's input text -> the program's keyword arguments.

    A program with one parameter takes the text itself; one with several takes a JSON
    object with one key per parameter.
    """
    if len(arguments) == 1:
        return {arguments[0]: text}
    try:
        return json_object(text, arguments)
    except ValueError as exc:
        raise ProgramTraceError(
            f"{where}: the program takes {', '.join(arguments)}: {exc}"
        ) from exc


def program_fingerprint(program: dspy.Module) -> str:
    """A digest of what the program's predictors send: names, signatures (instructions,
    fields, types) and demos. Serving a workflow checks it against the traced one."""
    h = hashlib.sha256()
    for name, pred in program.named_predictors():
        sig = pred.signature
        h.update(name.encode() + b"\0" + sig.instructions.encode() + b"\0")
        for fname, f in {**sig.input_fields, **sig.output_fields}.items():
            h.update(f"{fname}:{f.annotation!r}:{f.json_schema_extra!r}\0".encode())
        demos = [d.toDict() if hasattr(d, "toDict") else d for d in pred.demos]
        h.update(json.dumps(demos, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def stage_names(predictor_names: list[str]) -> list[str]:
    """Stage names for a sequence of predictor calls: the predictor's name without the
    ``.predict`` of a wrapping module (ChainOfThought), ``_2``, ``_3``, ... for repeats."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for p in predictor_names:
        base = p[: -len(".predict")] if p.endswith(".predict") else p
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out
