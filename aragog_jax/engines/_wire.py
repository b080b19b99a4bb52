"""The engine side of the OpenAI chat-completions protocol: replies and stream chunks.

msgspec Structs with their decoders built once; unknown fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _RespMessage(msgspec.Struct, frozen=True):
    role: str = "assistant"
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _RespMessage
    index: int = 0
    finish_reason: str | None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """An engine's non-streaming reply; unknown fields are ignored."""

    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    id: str = ""
    model: str = ""
    usage: Usage | None = None


class _Delta(msgspec.Struct, frozen=True):
    role: str | None = None
    content: str | None = None


class _ChunkChoice(msgspec.Struct, frozen=True):
    delta: _Delta = _Delta()
    index: int = 0
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True):
    choices: list[_ChunkChoice] = []
    usage: Usage | None = None
    error: Any = None  # an error chunk (``{"error": {"message": ...}}``) ends a stream


ENCODER = msgspec.json.Encoder()
COMPLETION_DECODER = msgspec.json.Decoder(ChatCompletion)
CHUNK_DECODER = msgspec.json.Decoder(ChatCompletionChunk)
