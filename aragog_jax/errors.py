"""One exception tree for the whole project.

Every error a user can cause or act on is an :class:`AragogError`. CLIs print its
message on one or two lines and exit with status 2; the server maps each subclass to
one HTTP status (see ``aragog_jax.serving``). Transport exceptions are mapped at one
boundary and re-raised ``from exc`` so the cause stays visible in logs.
"""

from __future__ import annotations


class AragogError(Exception):
    """Base of every error aragog_jax raises on purpose."""


class SpecError(AragogError, ValueError):
    """A spec file (workflow, model cards, engine profile, fleet) is invalid.

    The message names the file, the field and the offending value.
    """


class SpaceTooLargeError(SpecError):
    """A configuration space is larger than the dense-enumeration limit."""


class ProgramTraceError(SpecError):
    """A DSPy program cannot be served as a fixed workflow (``aragog_jax.dspy``): its
    structure depends on the input, or a predictor input cannot be replayed. The message
    names the predictor."""


class DatasetError(AragogError, ValueError):
    """An accuracy dataset or an input row is malformed or does not match its workflow."""


class CheckpointError(AragogError, ValueError):
    """A router checkpoint is unreadable or was trained for another configuration space."""


class SchedulerError(AragogError, ValueError):
    """An invalid call into the scheduler state machine (unknown request, double finish, ...)."""


class UpstreamError(AragogError):
    """An engine (vLLM, SGLang, emulated) failed: connection error, 5xx, malformed reply."""


class UpstreamTimeout(UpstreamError):
    """An engine did not answer within its timeout."""


class EngineRejected(UpstreamError):
    """The engine refused the request itself (HTTP 400, 413 or 422, e.g. a prompt over the
    context length): the run fails, the engine is not blamed (another would refuse it too)."""


class StageFunctionError(AragogError):
    """A workflow's own stage function (``[[stage]] function``) raised or returned a non-str."""


class NoViableConfigurationError(AragogError):
    """No admitted configuration is left for a request (every option failed)."""


class OverloadedError(AragogError):
    """The meta-queue is full; the caller should retry later."""


class DeadlineExceededError(AragogError):
    """A request ran past its deadline."""


# ---- the server's request errors (each maps to one HTTP status) ----------------------


class NotFound(AragogError):
    """Unknown workflow, route or round: 404."""


class BadRequest(AragogError):
    """The request is malformed: 400; ``field`` names the offending field when known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Unauthorized(AragogError):
    """Missing or wrong API key: 401."""


class ShuttingDown(AragogError):
    """The server is draining: 503."""


class RequestTimeout(AragogError):
    """The request body did not arrive within ``body_timeout_s``: 408."""


class PayloadTooLarge(AragogError):
    """The request body is over ``max_body_bytes``: 413."""


class JobError(AragogError):
    """A batch job on a cluster (``route --ray``) could not start or did not finish: the
    cluster cannot be joined, or units of work (shards) failed or kept killing their worker.

    ``failures`` names the failed units (empty when none ran). The finished ones are kept,
    so rerunning the same command resumes with the rest.
    """

    def __init__(self, message: str, failures: tuple = ()):
        super().__init__(message)
        self.failures = tuple(failures)
