"""Coppice: a Python SDK for the Coppice sandbox server (ConTree-compatible).

Standard library only. Run commands in sandboxes, branch from any filesystem state, read any
image's files without running it.

    >>> from coppice import CoppiceSync
    >>> client = CoppiceSync(base_url="http://127.0.0.1:8080", token=token)
    >>> base = client.images.use("busybox:latest")
    >>> env = base.run(shell="echo setup > /state", disposable=False).wait()
    >>> ops = {n: env.run(shell=f"echo {n} >> /state && cat /state") for n in "abc"}
    >>> {n: op.wait().stdout for n, op in ops.items()}
    {'a': 'setup\\na\\n', 'b': 'setup\\nb\\n', 'c': 'setup\\nc\\n'}

``Coppice`` is the asyncio client with the same methods. ``coppice.compat`` offers ConTree's
names (``ContreeSync``, ``Contree``) for scripts written for ConTree's SDK.
"""
from ._async import (AsyncFilesManager, AsyncImage, AsyncImagesManager, AsyncImportOperation,
                     AsyncOperationsManager, AsyncPreparedRun, AsyncSession, Coppice)
from ._config import CoppiceConfig, coppice_home, read_profile
from ._errors import (ApiError, BadRequestError, CancelledOperationError, ConfigError,
                      ConflictError, CoppiceError, DisposableImageRunError,
                      EventStreamInterruptedError, FailedOperationError, ForbiddenError,
                      GoneError, ImageStateError, MalformedEventError, NotFoundError,
                      OperationError, OperationTimedOutError, PayloadTooLargeError,
                      RateLimitError, ServerError, TooEarlyError, TooManyRequestsError,
                      TransportError, UnauthorizedError, UnprocessableEntityError,
                      WaitTimeoutError)
from ._models import (FileEntry, GrepMatch, GrepResult, OperationInfo, OutputChunk, RunResult,
                      UploadedFile, UploadFileSpec, WhoAmI)
from ._sync import (CoppiceSync, FilesManager, Image, ImagesManager, ImportOperation,
                    OperationsManager, PreparedRun, Session)
from ._transport import __version__
from ._treesearch import fan_out

__all__ = [
    "__version__",
    # clients
    "CoppiceSync", "Coppice", "CoppiceConfig", "coppice_home", "read_profile",
    # objects
    "Image", "PreparedRun", "Session", "ImportOperation", "ImagesManager", "FilesManager",
    "OperationsManager", "AsyncImage", "AsyncPreparedRun", "AsyncSession",
    "AsyncImportOperation", "AsyncImagesManager", "AsyncFilesManager",
    "AsyncOperationsManager",
    # data
    "RunResult", "OutputChunk", "UploadedFile", "UploadFileSpec", "FileEntry", "GrepMatch",
    "GrepResult", "OperationInfo", "WhoAmI",
    # helpers
    "fan_out",
    # errors
    "CoppiceError", "ConfigError", "TransportError", "ApiError", "BadRequestError",
    "UnauthorizedError", "ForbiddenError", "NotFoundError", "ConflictError", "GoneError",
    "PayloadTooLargeError", "UnprocessableEntityError", "TooEarlyError",
    "TooManyRequestsError", "RateLimitError", "ServerError", "OperationError",
    "FailedOperationError", "CancelledOperationError", "OperationTimedOutError",
    "WaitTimeoutError", "DisposableImageRunError", "ImageStateError",
    "EventStreamInterruptedError", "MalformedEventError",
]
