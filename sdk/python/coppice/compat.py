"""ConTree SDK names, so a script written for ``contree_sdk`` runs on Coppice by changing one
import::

    # from contree_sdk import ContreeSync
    from coppice.compat import ContreeSync

    client = ContreeSync(base_url="http://127.0.0.1:8080", token=token)
    image = client.images.use("busybox:latest")
    print(image.run(shell="echo hi").wait().stdout)

Besides the ``COPPICE_*`` variables, the clients here also read ConTree's: ``CONTREE_TOKEN``
(or ``NEBIUS_API_KEY``), ``CONTREE_BASE_URL``/``CONTREE_URL`` and ``CONTREE_PROJECT`` (or
``NEBIUS_AI_PROJECT``/``NEBIUS_PROJECT_ID``). ``ContreeConfig(auth=JWTAuth(...))`` works as in
ConTree, including its rule that a value naming a set environment variable is replaced by
that variable's value. Runs default to ``truncate_output_at=65535`` as in ConTree.

Not carried over: ``run(stdout=bytes)`` (use ``result.stdout_bytes``), ``popen()``, the
LangChain/Harbor/Docker integrations.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import _async, _sync
from ._config import CoppiceConfig
from ._errors import (CancelledOperationError, CoppiceError, DisposableImageRunError,
                      EventStreamInterruptedError, FailedOperationError, ImageStateError,
                      MalformedEventError, NotFoundError, OperationTimedOutError, TooEarlyError,
                      TooManyRequestsError)
from ._models import OutputChunk, RunResult, UploadedFile, UploadFileSpec

_CONTREE_ENV = {"url": ("CONTREE_BASE_URL", "CONTREE_URL"),
                "token": ("CONTREE_TOKEN", "NEBIUS_API_KEY"),
                "project": ("CONTREE_PROJECT", "NEBIUS_AI_PROJECT", "NEBIUS_PROJECT_ID")}


def _env_indirect(value: str | None) -> str | None:
    """ConTree's rule: a value that is the name of a set environment variable stands for it."""
    if value and value in os.environ:
        return os.environ[value]
    return value


@dataclasses.dataclass(frozen=True)
class JWTAuth:
    """ConTree's token-only authentication (``token``, ``base_url``; each may name an
    environment variable)."""

    token: str | None = "CONTREE_TOKEN"
    base_url: str | None = "CONTREE_BASE_URL"


@dataclasses.dataclass(frozen=True)
class IAMAuth:
    """ConTree's IAM authentication (token plus project)."""

    token: str | None = "NEBIUS_API_KEY"
    project_id: str | None = "NEBIUS_PROJECT_ID"
    base_url: str | None = None


def ContreeConfig(auth: JWTAuth | IAMAuth | None = None, *, transport_timeout: float = 10.0,
                  default_truncate_output_at: int | None = 65535,
                  images_list_batch_size: int = 100, **ignored: Any) -> CoppiceConfig:
    """Builds a :class:`CoppiceConfig` from ConTree's configuration arguments (options with no
    Coppice meaning, such as ``transport``, are accepted and ignored)."""
    base_url = token = project = None
    if auth is not None:
        token = _env_indirect(auth.token)
        base_url = _env_indirect(auth.base_url)
        if isinstance(auth, IAMAuth):
            project = _env_indirect(auth.project_id)
        # An unset variable name is not a value.
        token = None if token in ("CONTREE_TOKEN", "NEBIUS_API_KEY") else token
        base_url = None if base_url == "CONTREE_BASE_URL" else base_url
        project = None if project == "NEBIUS_PROJECT_ID" else project
    return CoppiceConfig(base_url=base_url, token=token, project=project,
                         timeout=max(transport_timeout, 1.0),
                         default_truncate_output_at=default_truncate_output_at,
                         images_list_batch_size=images_list_batch_size)


def _contree_defaults(config: CoppiceConfig | None) -> CoppiceConfig:
    if config is None:
        return CoppiceConfig(default_truncate_output_at=65535)
    return config


class ContreeSync(_sync.CoppiceSync):
    """ConTree's synchronous client name (a :class:`coppice.CoppiceSync`)."""

    def __init__(self, config: CoppiceConfig | None = None, *, base_url: str | None = None,
                 token: str | None = None, **kwargs: Any) -> None:
        super().__init__(_contree_defaults(config), base_url=base_url, token=token, **kwargs)

    @staticmethod
    def _fallback_env() -> dict[str, tuple[str, ...]]:
        return dict(_CONTREE_ENV)


class Contree(_async.Coppice):
    """ConTree's asyncio client name (a :class:`coppice.Coppice`)."""

    def __init__(self, config: CoppiceConfig | None = None, *, base_url: str | None = None,
                 token: str | None = None, **kwargs: Any) -> None:
        super().__init__(_contree_defaults(config), base_url=base_url, token=token, **kwargs)

    @staticmethod
    def _sync_class() -> type[_sync.CoppiceSync]:
        return ContreeSync


ContreeImage = _sync.Image
ContreeSession = _sync.Session
ContreeResult = RunResult
ContreeError = CoppiceError
ContreeImageStateError = ImageStateError

__all__ = [
    "Contree", "ContreeSync", "ContreeConfig", "JWTAuth", "IAMAuth", "ContreeImage",
    "ContreeSession", "ContreeResult", "ContreeError", "ContreeImageStateError",
    "OutputChunk", "UploadFileSpec", "UploadedFile", "NotFoundError", "TooEarlyError",
    "TooManyRequestsError", "FailedOperationError", "CancelledOperationError",
    "OperationTimedOutError", "DisposableImageRunError", "EventStreamInterruptedError",
    "MalformedEventError",
]
