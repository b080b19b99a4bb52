"""The LM a DSPy program sees while it is traced: typed placeholder outputs unique per call
and example (or a real LM passed through), with each call's token counts."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import types
import typing
from typing import Any

import dspy
from aragog_jax.errors import ProgramTraceError
from dspy.lm15 import Message, Response, TextPart, Usage

#: Characters per token of the placeholder trace's estimate (the same rule the loopback
#: fake engine reports usage with).
CHARS_PER_TOKEN = 4


def _digest(*parts: object) -> int:
    return int.from_bytes(
        hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest(), "little"
    )


def placeholder_value(annotation: Any, key: str, where: str) -> Any:
    """A value of type ``annotation`` unique to ``key`` (strings and numbers) or chosen by it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    h = _digest(key)
    if annotation is str or annotation is Any:
        return f"<{key}>"
    if annotation is bool:
        return bool(h & 1)
    if annotation is int:
        return 1000 + h % 9_000_000
    if annotation is float:
        return 1000.5 + h % 9_000_000
    if origin is typing.Literal:
        return args[h % len(args)]
    if origin in (typing.Union, types.UnionType):
        return placeholder_value(next(a for a in args if a is not type(None)), key, where)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        item = args[0] if args else str
        return [placeholder_value(item, f"{key}.{i}", where) for i in range(2)]
    if origin is dict or annotation is dict:
        val = args[1] if len(args) == 2 else str
        return {"k0": placeholder_value(val, f"{key}.k0", where)}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members = list(annotation)
        return members[h % len(members)]
    model_fields = getattr(annotation, "model_fields", None)
    if isinstance(model_fields, dict):  # a pydantic model
        return annotation(
            **{
                n: placeholder_value(f.annotation, f"{key}.{n}", where)
                for n, f in model_fields.items()
            }
        )
    raise ProgramTraceError(
        f"{where}: cannot make a placeholder value of type {annotation!r}; trace with a real LM (--lm)"
    )


class TraceEngine:
    """The LM seen while tracing: answers every predictor call with its placeholder
    outputs (formatted by the active adapter, so DSPy parses them as it would a reply) or
    forwards to a real ``dspy.LM``; records the token counts of each call."""

    def __init__(self, real: dspy.BaseLM | None):
        self.real = real
        self.example = 0
        self.usage: list[tuple[int, int, int]] = []  # (call index, input tokens, output tokens)

    def complete(self, request):
        index = len(dspy.settings.trace)  # the call this LM call belongs to (recorded when it ends)
        if self.real is not None:
            resp = self.real(dataclasses.replace(request, model=self.real.model))
            self.usage.append((index, resp.usage.input_tokens or 0, resp.usage.output_tokens or 0))
            return resp
        pred = dspy.settings.caller_modules[-1]
        sig = pred.signature
        outputs = {
            name: placeholder_value(
                f.annotation,
                f"e{self.example}.c{index}.{name}",
                f"output field {name!r} of {sig.__name__}",
            )
            for name, f in sig.output_fields.items()
        }
        adapter = dspy.settings.adapter or dspy.ChatAdapter()
        text = adapter.format_assistant_message_content(sig, outputs)
        prompt = (request.system if isinstance(request.system, str) else "") + "".join(
            m.text or "" for m in request.messages
        )
        self.usage.append((index, len(prompt) // CHARS_PER_TOKEN, 0))
        return Response(
            id=None,
            model="placeholder",
            message=Message.assistant((TextPart(text),)),
            finish_reason="stop",
            usage=Usage(0, 0),
        )

    def stream(self, request):
        raise ProgramTraceError("streaming is not supported while tracing")

    def close(self) -> None:
        pass
