"""Errors, in two separate trees.

Request-time errors reach clients as OpenAI-style JSON. Each class has a `kind` that routing
rules can test (`error.kind`) and maps to an HTTP status, an OpenAI `type` and a `code`:

    GatewayError
    ├── InvalidRequest            400 invalid_request_error   (code names the problem)
    │   ├── ContextWindowExceeded 400 invalid_request_error   context_length_exceeded
    │   └── ContentFilter         400 invalid_request_error   content_filter
    ├── AuthenticationFailed      401 authentication_error    invalid_api_key
    ├── PermissionDenied          403 permission_error
    ├── NotFound                  404 invalid_request_error   model_not_found
    ├── RateLimited               429 rate_limit_error        rate_limit_exceeded
    ├── BudgetExceeded            429 insufficient_quota      budget_exceeded
    ├── NotConfigured             503 server_error            not_configured (no credentials)
    ├── InternalError             500 server_error            internal_error (the gateway's own fault)
    └── UpstreamError             502 upstream_error          the kind
        ├── Overloaded            503
        ├── UpstreamTimeout       504 timeout_error           upstream_timeout
        ├── Upstream5xx, UpstreamConnection, ResponseParsing
        ├── IncompleteStream      502                         incomplete_stream (no terminal event)
        ├── InvalidOutput         502                         invalid_output (strict json_schema)
        └── AllFailed             status of the last error    all_failed
    Shutdown                      503 server_error            shutdown (the server stopped it)
    Busy                          503 server_error            busy (limits.max_in_flight reached)

Load-time problems in spec files are `SpecError` (file, line, JSON pointer), outside that tree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_KINDS",
    "AllFailed",
    "AuthenticationFailed",
    "BudgetExceeded",
    "Busy",
    "ContentFilter",
    "ContextWindowExceeded",
    "GatewayError",
    "IncompleteStream",
    "InternalError",
    "InvalidOutput",
    "InvalidRequest",
    "NotConfigured",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "RateLimited",
    "ResponseParsing",
    "Shutdown",
    "SpecError",
    "SpecLoadError",
    "Upstream5xx",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamTimeout",
    "drop_tracebacks",
    "error_for_kind",
]


class GatewayError(Exception):
    """A failure a client sees as `{"error": {"message", "type", "param", "code"}}`."""

    kind = "upstream_5xx"
    status = 500
    type = "server_error"
    code: str | None = None
    #: Raised by the gateway before the upstream was contacted (a deployment's own rate limit, a
    #: request it could not build): says nothing of the deployment's health, so no breaker outcome.
    before_upstream = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.attempts = attempts
        #: For all_failed: one entry per deployment tried (deployment, kind, status, attempts, message).
        self.failures: list[dict[str, Any]] | None = None
        #: For timeouts: how long the gateway waited, in seconds.
        self.duration: float | None = None

    def to_openai(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.failures is not None:
            error["failures"] = self.failures
        return {"error": error}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, status={self.status}, message={self.message!r})"


class InvalidRequest(GatewayError):
    kind, status, type, code = "invalid_request", 400, "invalid_request_error", "invalid_value"


class ContextWindowExceeded(InvalidRequest):
    kind, code = "context_window_exceeded", "context_length_exceeded"


class ContentFilter(InvalidRequest):
    kind, code = "content_filter", "content_filter"


class AuthenticationFailed(GatewayError):
    kind, status, type, code = "authentication", 401, "authentication_error", "invalid_api_key"


class PermissionDenied(GatewayError):
    kind, status, type, code = "permission", 403, "permission_error", None


class NotFound(GatewayError):
    kind, status, type, code = "not_found", 404, "invalid_request_error", "model_not_found"


class RateLimited(GatewayError):
    kind, status, type, code = "rate_limit", 429, "rate_limit_error", "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    kind, status, type, code = "budget_exceeded", 429, "insufficient_quota", "budget_exceeded"

    @classmethod
    def refused(
        cls, period: str, limit: float, user: str, used: float, reserved: float, estimate: float, *, scope: str = "user"
    ) -> BudgetExceeded:
        """The refusal of a request whose estimated cost the `period` ("daily", "monthly") budget
        of the `scope` ("user", "team") named `user` cannot hold: what is used, what requests in
        flight hold, what this one would take. Every budget store (in-process, Redis) words it so."""
        why = "is spent" if used >= limit else "cannot cover this request"
        whole = " (more than the whole budget)" if estimate > limit else ""
        return cls(
            f"The {period} budget of {_usd(limit)} for {scope} '{user}' {why}: {_usd(used)} used, "
            f"{_usd(reserved)} reserved by requests in flight, {_usd(estimate)} estimated for this request{whole}."
        )


def _usd(amount: float) -> str:
    """Dollars to the 8th decimal (as x-gaud-cost), trailing zeros dropped: $0.05, $0.000414.
    Float sums of reservations can end a hair below zero; that prints as $0.00."""
    whole, _, fraction = f"{max(amount, 0.0):.8f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


class Busy(GatewayError):
    """This process already serves `limits.max_in_flight` requests: refused before any upstream
    work, with a `retry-after`. The gateway's own kind; never retried or failed over."""

    kind, status, type, code = "busy", 503, "server_error", "busy"


class NotConfigured(GatewayError):
    """A deployment whose provider has no credentials here: skipped, never sent upstream. The
    message names the provider and the variables to set, never their values."""

    kind, status, type, code = "not_configured", 503, "server_error", "not_configured"


class InternalError(GatewayError):
    """Something in the gateway failed unexpectedly (a bug). The client sees only this generic
    message; what happened is logged. Counted as a failure of the deployment being tried.
    Not a kind a provider spec can classify an upstream error as."""

    kind, status, type, code = "internal_error", 500, "server_error", "internal_error"

    def __init__(self, message: str = "Internal gateway error.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class UpstreamError(GatewayError):
    kind, status, type, code = "upstream_5xx", 502, "upstream_error", "upstream_5xx"


class Upstream5xx(UpstreamError):
    pass


class Overloaded(UpstreamError):
    kind, status, code = "overloaded", 503, "overloaded"


class UpstreamTimeout(UpstreamError):
    kind, status, type, code = "timeout", 504, "timeout_error", "upstream_timeout"


class UpstreamConnection(UpstreamError):
    kind, code = "connection", "connection"


class ResponseParsing(UpstreamError):
    kind, code = "response_parsing", "response_parsing"


class IncompleteStream(UpstreamError):
    """A stream that ended cleanly without its terminal event (spec `stream.ends_with`): cut short."""

    kind, code = "incomplete_stream", "incomplete_stream"


class InvalidOutput(UpstreamError):
    """The reply does not match the strict JSON Schema the request asked for."""

    kind, code = "invalid_output", "invalid_output"


class AllFailed(UpstreamError):
    kind, code = "all_failed", "all_failed"


class Shutdown(GatewayError):
    """The server is stopping and this request was still running at `server.shutdown_timeout`.

    The server ends such requests by cancelling their tasks with `CANCEL` as the message
    (engine.web.drain); the layers that can still answer (the pipeline, a stream's relay) turn
    that cancellation into this error with `caught`. Never retried, and not a deployment's fault."""

    kind, status, type, code = "shutdown", 503, "server_error", "shutdown"
    CANCEL = "gaud-engine: server.shutdown_timeout reached"

    @classmethod
    def caught(cls, cancel: BaseException) -> Shutdown | None:
        """The error for a cancellation by the server's shutdown, with the task's cancel request
        withdrawn (so the request can still answer and be audited); None for any other one."""
        if not cancel.args or cancel.args[0] != cls.CANCEL:
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return cls("The gateway is shutting down and this request did not finish in time; send it again.")


_BY_KIND: dict[str, type[GatewayError]] = {
    cls.kind: cls
    for cls in (
        InvalidRequest,
        ContextWindowExceeded,
        ContentFilter,
        AuthenticationFailed,
        PermissionDenied,
        NotFound,
        RateLimited,
        BudgetExceeded,
        NotConfigured,
        Upstream5xx,
        Overloaded,
        UpstreamTimeout,
        UpstreamConnection,
        ResponseParsing,
        IncompleteStream,
        InvalidOutput,
        AllFailed,
    )
}
ERROR_KINDS: tuple[str, ...] = tuple(_BY_KIND)


def drop_tracebacks(error: BaseException | None) -> None:
    """Forget the frames of a handled error and of the errors it was raised from.

    A traceback holds the frames it passed through, and their locals often hold the error again
    (and the request): a reference cycle that only the cycle collector frees, which the server
    runs rarely (see server.GC_GEN0_THRESHOLD). Messages, kinds and causes are kept."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def error_for_kind(kind: str, message: str, **kwargs: Any) -> GatewayError:
    """The error class for a kind named in a spec's error table."""
    return _BY_KIND.get(kind, Upstream5xx)(message, **kwargs)


@dataclass
class SpecError:
    """One problem in a spec file: where it is and what is wrong."""

    file: str
    line: int
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.pointer}: {self.message}"


class SpecLoadError(Exception):
    """Raised when specs fail to load; carries every problem found."""

    def __init__(self, problems: list[SpecError]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
