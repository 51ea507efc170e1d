"""Client configuration: arguments, then the environment, then the CLI's profile file.

Each of the URL, token and project is taken from the first place that has it:

1. the constructor's arguments (``base_url=``, ``token=``, ``project=``), or a
   :class:`CoppiceConfig` passed as ``config``;
2. the environment: ``COPPICE_URL``, ``COPPICE_TOKEN``, ``COPPICE_PROJECT``;
3. the ``coppice`` CLI's profile file, ``$COPPICE_HOME/auth.ini`` (default
   ``~/.coppice/auth.ini``), profile ``profile=`` / ``COPPICE_PROFILE`` / the file's current
   profile / ``default``. The file looks like::

       [DEFAULT]
       profile = default

       [profile:default]
       url = http://127.0.0.1:8080
       token = ...
"""
from __future__ import annotations

import configparser
import dataclasses
import os
import pathlib
import urllib.parse
from typing import Mapping

from ._errors import ConfigError


@dataclasses.dataclass(frozen=True)
class CoppiceConfig:
    """Settings of a client. Every field is optional; see the module docs for where the URL,
    token and project come from when they are None.

    * ``timeout``: socket timeout (s) of ordinary requests.
    * ``stream_timeout``: longest silence (s) on an event stream before the SDK reconnects
      (the server sends a keep-alive every 15 s).
    * ``max_retries``: replays of a request answered 425/429 (any method) or a 502/503/504 or a
      dropped connection (idempotent requests only). ``max_retry_delay`` caps one wait.
    * ``gzip``: ask for compressed responses (worth it over slow links; off on loopback).
    * ``default_truncate_output_at``: the ``truncate_output_at`` of runs that do not set one
      (None: the server's default, 1 MiB per stream).
    * ``images_list_batch_size``: the page size when iterating over images or files.
    * ``max_stream_reconnects``: reconnections of one event stream that made no progress
      before the SDK falls back to polling the operation.
    * ``async_max_workers``: threads of the asyncio client's executor (one per concurrent
      blocking call, e.g. one per run being awaited).
    """

    base_url: str | None = None
    token: str | None = None
    project: str | None = None
    profile: str | None = None
    config_file: str | os.PathLike[str] | None = None
    timeout: float = 60.0
    stream_timeout: float = 60.0
    max_retries: int = 8
    max_retry_delay: float = 30.0
    gzip: bool = False
    default_truncate_output_at: int | None = None
    images_list_batch_size: int = 100
    max_stream_reconnects: int = 8
    async_max_workers: int = 256
    user_agent: str | None = None


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """The configuration after resolution: where to connect and with which credentials."""

    base_url: str
    token: str | None
    project: str | None
    settings: CoppiceConfig


def coppice_home(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """``$COPPICE_HOME``, else ``~/.coppice`` (where the CLI keeps ``auth.ini``)."""
    env = os.environ if env is None else env
    home = env.get("COPPICE_HOME")
    if home:
        return pathlib.Path(home)
    return pathlib.Path(env.get("HOME") or pathlib.Path.home()) / ".coppice"


def read_profile(file: str | os.PathLike[str] | None = None, name: str | None = None,
                 env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Returns the keys (``url``, ``token``, maybe ``project``) of a CLI profile, or ``{}``
    when the file or the profile does not exist."""
    env = os.environ if env is None else env
    path = pathlib.Path(file) if file else coppice_home(env) / "auth.ini"
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if name is None:
        name = env.get("COPPICE_PROFILE") or None
    if name is None and parser.has_section("DEFAULT"):
        name = parser.get("DEFAULT", "profile", fallback=None)
    section = f"profile:{name or 'default'}"
    if not parser.has_section(section):
        return {}
    return {k: v for k, v in parser.items(section) if v}


def validate_base_url(url: str) -> str:
    """Checks an http(s) URL with a host; returns it without a trailing slash. A path prefix is
    kept (``http://h/prefix`` sends requests to ``/prefix/v1/...``)."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"base_url must be an http:// or https:// URL with a host, not {url!r}")
    return url.strip().rstrip("/")


def resolve_config(config: CoppiceConfig | None = None, *, base_url: str | None = None,
                   token: str | None = None, project: str | None = None,
                   profile: str | None = None,
                   env: Mapping[str, str] | None = None,
                   fallback_env: Mapping[str, tuple[str, ...]] | None = None) -> ResolvedConfig:
    """Resolves URL, token and project (arguments, environment, profile file)."""
    cfg = config or CoppiceConfig()
    environ: Mapping[str, str] = os.environ if env is None else env
    names: dict[str, tuple[str, ...]] = {"url": ("COPPICE_URL",), "token": ("COPPICE_TOKEN",),
             "project": ("COPPICE_PROJECT",)}
    for key, more in (fallback_env or {}).items():
        names[key] = names[key] + more

    def from_env(key: str) -> str | None:
        for n in names[key]:
            if environ.get(n):
                return environ[n]
        return None

    url = base_url or cfg.base_url or from_env("url")
    tok = token or cfg.token or from_env("token")
    proj = project or cfg.project or from_env("project")
    if not url or not tok:
        prof = read_profile(cfg.config_file, profile or cfg.profile, environ)
        url = url or prof.get("url")
        tok = tok or prof.get("token")
        proj = proj or prof.get("project")
    if not url:
        raise ConfigError("no server URL: pass base_url=..., set COPPICE_URL, or save a profile "
                          "with `coppice auth --url URL --token TOKEN`")
    return ResolvedConfig(validate_base_url(url), tok, proj, cfg)
