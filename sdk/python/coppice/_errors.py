"""Typed exceptions. Every exception the SDK raises derives from :class:`CoppiceError`.

HTTP failures are :class:`ApiError` subclasses chosen by status code (``NotFoundError`` for 404,
``TooManyRequestsError`` for 429, ...). Operation outcomes that are not a normal finish are
:class:`OperationError` subclasses: ``FailedOperationError`` (a platform error, e.g. a bad
image), ``CancelledOperationError`` and ``OperationTimedOutError`` (the command hit its
``timeout``; the partial result is attached).

    >>> from coppice import CoppiceSync, NotFoundError
    >>> try:
    ...     client.images.use("no-such-tag:1", strict=True)
    ... except NotFoundError as e:
    ...     print(e.status, e.message)
    404 ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import RunResult


class CoppiceError(Exception):
    """Base class of every SDK exception."""


class ConfigError(CoppiceError, ValueError):
    """The client could not be configured (no URL, a malformed URL, a missing profile)."""


class TransportError(CoppiceError, ConnectionError):
    """The connection to the server failed.

    ``maybe_accepted`` is true when a non-idempotent request (a spawn or an import) was sent
    and no answer came back: the server may have accepted it, so the SDK did not replay it.
    Check ``client.operations.list()`` before trying again.
    """

    def __init__(self, message: str, *, method: str = "", path: str = "",
                 maybe_accepted: bool = False) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.maybe_accepted = maybe_accepted


class ApiError(CoppiceError):
    """The server answered with an error status. ``status``, ``message`` (the body's ``error``),
    ``body`` (the decoded JSON body, or None), ``retry_after`` (seconds, when sent)."""

    status: int = 0

    def __init__(self, message: str, *, status: int | None = None, method: str = "",
                 path: str = "", body: Any = None, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        self.message = message
        if status is not None:
            self.status = status
        self.method = method
        self.path = path
        self.body = body
        self.retry_after = retry_after
        self.request_id = request_id
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{self.status}: {message}{where}")


class BadRequestError(ApiError):
    """400: the request is malformed or a value is out of range."""

    status = 400


class UnauthorizedError(ApiError):
    """401: the token is missing, unknown or expired."""

    status = 401


class ForbiddenError(ApiError):
    """403: the token may not do this (e.g. re-tag a public base image)."""

    status = 403


class NotFoundError(ApiError):
    """404: no such image, tag, file, path or operation (in this project)."""

    status = 404


class ConflictError(ApiError):
    """409: e.g. cancelling an operation that already finished."""

    status = 409


class GoneError(ApiError):
    """410: gone for now (the server asks to retry after ``Retry-After``)."""

    status = 410


class PayloadTooLargeError(ApiError):
    """413: the upload or the JSON body is over the server's limit."""

    status = 413


class UnprocessableEntityError(ApiError):
    """422: the path is not usable here (e.g. downloading a directory)."""

    status = 422


class TooEarlyError(ApiError):
    """425: the server is not ready for this request yet (retried automatically first)."""

    status = 425


class TooManyRequestsError(ApiError):
    """429: rate limited or the queue is full (retried automatically first)."""

    status = 429


RateLimitError = TooManyRequestsError


class ServerError(ApiError):
    """A 5xx answer."""

    status = 500


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
    409: ConflictError, 410: GoneError, 413: PayloadTooLargeError,
    422: UnprocessableEntityError, 425: TooEarlyError, 429: TooManyRequestsError,
}


def error_for_status(status: int, message: str, **kw: Any) -> ApiError:
    """Builds the ApiError subclass for an HTTP status."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(message, status=status, **kw)


class OperationError(CoppiceError):
    """An operation (a run or an import) did not finish normally."""

    def __init__(self, message: str, operation_uuid: str | None = None) -> None:
        super().__init__(message)
        self.operation_uuid = operation_uuid


class FailedOperationError(OperationError):
    """The operation ended ``FAILED``: a platform error (``error`` holds the server's message),
    not a non-zero exit code, which is a normal result."""

    def __init__(self, error: str | None, operation_uuid: str | None = None) -> None:
        super().__init__(f"operation {operation_uuid} failed: {error}", operation_uuid)
        self.error = error


class CancelledOperationError(OperationError):
    """The operation was cancelled (``DELETE /v1/operations/{id}``)."""

    def __init__(self, operation_uuid: str | None = None) -> None:
        super().__init__(f"operation {operation_uuid} was cancelled", operation_uuid)


class OperationTimedOutError(OperationError):
    """The command ran past its ``timeout`` and was killed. ``result`` holds what it printed and
    its exit state; ``image`` is the snapshot taken after the kill (None when disposable)."""

    def __init__(self, operation_uuid: str | None = None, result: RunResult | None = None,
                 image: Any = None) -> None:
        super().__init__(f"operation {operation_uuid} timed out", operation_uuid)
        self.result = result
        self.image = image


class WaitTimeoutError(CoppiceError, TimeoutError):
    """``wait(timeout=...)`` gave up waiting; the operation goes on (wait again, or cancel)."""


class DisposableImageRunError(CoppiceError):
    """``run()`` was called on the result of a disposable run, which has no image."""


class ImageStateError(CoppiceError):
    """The object is not in a state that allows the call (e.g. ``.stdout`` of an image that is
    not a run result)."""


class EventStreamInterruptedError(CoppiceError):
    """The event stream ended without the events the SDK needs and polling could not help."""


class MalformedEventError(CoppiceError):
    """The server sent an event the SDK cannot parse."""
