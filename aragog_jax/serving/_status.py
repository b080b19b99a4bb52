"""Errors to HTTP: one table of statuses, the JSON error response, and the small checks
on what a request or the bind address says (see :mod:`._server`)."""

from __future__ import annotations

import ipaddress
import re

import msgspec
from aiohttp import web

from aragog_jax.errors import (
    AragogError,
    BadRequest,
    DeadlineExceededError,
    NotFound,
    NoViableConfigurationError,
    OverloadedError,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    SpecError,
    StageFunctionError,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from aragog_jax.serving._wire import error_body

RETRY_AFTER_S = 1

_STATUS: list[tuple[type[BaseException], int, str]] = [
    (BadRequest, 400, "invalid_request_error"),
    (SpecError, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (NotFound, 404, "not_found_error"),
    (RequestTimeout, 408, "request_timeout"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (OverloadedError, 429, "overloaded_error"),
    (ShuttingDown, 503, "unavailable"),
    (UpstreamTimeout, 504, "upstream_timeout"),
    (UpstreamError, 502, "upstream_error"),
    (NoViableConfigurationError, 503, "no_viable_configuration"),
    (DeadlineExceededError, 504, "deadline_exceeded"),
    (StageFunctionError, 500, "stage_function_error"),
    (AragogError, 503, "unavailable"),
]


#: Errors that refuse a request before a run is admitted (aragog_requests_rejected_total);
#: the others end an admitted run (aragog_requests_total{status}).
REJECTIONS = (
    BadRequest,
    SpecError,
    Unauthorized,
    NotFound,
    RequestTimeout,
    PayloadTooLarge,
    OverloadedError,
    ShuttingDown,
)

#: Names and ids from a request are clipped to this many characters in error messages.
ECHO_CHARS = 80


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` for an error message: at most ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def error_parts(exc: BaseException) -> tuple[int, dict[str, str], bytes]:
    """(status, extra headers, JSON body) of the error response for ``exc``."""
    status, kind = status_of(exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else {}
    return status, headers, error_body(str(exc), kind, status, getattr(exc, "field", None))


def error_response(exc: BaseException) -> web.Response:
    status, headers, body = error_parts(exc)
    resp = web.Response(
        status=status, body=body, content_type="application/json", headers=headers or None
    )
    if status == 408:
        resp.force_close()  # the rest of the body may still be coming
    return resp


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, or "" (every interface)
        return False


_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def schema_error(exc: msgspec.MsgspecError) -> BadRequest:
    msg = str(exc)
    m = _MISSING_RE.search(msg) or _FIELD_RE.search(msg)
    field = m.group(1) if m else None
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(
            f"invalid request: {msg}" + (f" (field {field!r})" if field else ""), field
        )
    return BadRequest(f"malformed JSON: {msg}", None)
