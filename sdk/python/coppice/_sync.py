"""The synchronous client: :class:`CoppiceSync` and the objects it hands out."""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import pathlib
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, Iterator, Mapping, Sequence, Union, cast

from ._config import CoppiceConfig, ResolvedConfig, resolve_config
from ._errors import (CancelledOperationError, ConflictError, DisposableImageRunError,
                      FailedOperationError, ImageStateError, NotFoundError,
                      OperationTimedOutError, UnprocessableEntityError)
from ._models import (FileEntry, FileSource, GrepResult, OperationInfo, OutputChunk, RunResult,
                      UploadedFile, UploadFileSpec, WhoAmI, encode_stream, parse_time,
                      resources_from_record)
from ._ops import OperationState
from ._transport import Transport, quote

TimeFilter = Union[str, int, float, _dt.datetime, _dt.timedelta, None]
FilesArg = Union[Sequence[Union[str, "os.PathLike[str]", UploadFileSpec]],
                 Mapping[str, Union[FileSource, UploadFileSpec]], None]
Command = Union[str, Sequence[str], None]

_UUID_CHARS = set("0123456789abcdefABCDEF-")


def _is_uuid(ref: str) -> bool:
    return len(ref) == 36 and ref.count("-") == 4 and set(ref) <= _UUID_CHARS


def time_filter(value: TimeFilter) -> str | None:
    """Formats ``since``/``until``: a datetime as ISO 8601 (naive means UTC), a timedelta or a
    number of seconds as "that long ago" (``3600s``), a string as is (``15m``, ``2h``,
    ``2026-01-01T00:00:00Z``)."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return f"{int(value.total_seconds())}s"
    if isinstance(value, (int, float)):
        return f"{int(value)}s"
    return str(value)


def default_tag(ref: str) -> str:
    """The tag an imported reference gets by default: the reference without its scheme, with
    ``docker.io/`` and ``library/`` dropped and ``:latest`` added when it names no tag
    (``docker://docker.io/library/busybox`` -> ``busybox:latest``)."""
    r = ref
    for scheme in ("docker://", "oci://"):
        if r.startswith(scheme):
            r = r[len(scheme):]
    for p in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if r.startswith(p):
            r = r[len(p):]
    if r.startswith("library/"):
        r = r[len("library/"):]
    if "@" in r:
        return r
    last = r.rsplit("/", 1)[-1]
    return r if ":" in last else r + ":latest"


def _image_from_json(client: CoppiceSync, j: Mapping[str, Any], like: Image | None = None
                     ) -> Image:
    """An Image from an image record; ``like`` lends its run result and parent."""
    return Image(client, str(j["uuid"]), tag=j.get("tag"),
                 created_at=parse_time(j.get("created_at")),
                 operation_uuid=j.get("operation_uuid"), parent_uuid=j.get("parent_uuid"),
                 depth=j.get("depth"), layer_size=j.get("layer_size"),
                 public=bool(j.get("public", False)),
                 result=like.result if like else None, parent=like.parent if like else None)


class _RunSpec:
    """The arguments of one ``run()``, checked and normalized, not yet sent."""

    __slots__ = ("command", "args", "shell", "env", "cwd", "hostname", "stdin", "files",
                 "timeout", "disposable", "truncate_output_at", "preserve_env", "tag", "uid",
                 "gid", "resources_limits")

    def __init__(self, command: Command = None, *, shell: str | bool | None = None,
                 args: Sequence[str] | None = None,
                 env: Mapping[str, str | None] | None = None, cwd: str | None = None,
                 hostname: str | None = None, stdin: str | bytes | None = None,
                 files: FilesArg = None, timeout: float | None = None,
                 disposable: bool = True, truncate_output_at: int | None = None,
                 preserve_env: bool = False, tag: str | None = None, uid: int | None = None,
                 gid: int | None = None,
                 resources_limits: Mapping[str, Any] | None = None) -> None:
        if isinstance(shell, str):
            if command is not None:
                raise ValueError("give either command or shell='...', not both")
            if args:
                raise ValueError("args cannot be used with shell='...'")
            command, is_shell = shell, True
        else:
            is_shell = bool(shell)
        if command is None:
            raise ValueError("run() needs a command (run('ls -l'), run(['ls', '-l']) or "
                             "run(shell='ls | wc -l'))")
        if is_shell:
            if not isinstance(command, str):
                command = shlex.join(command)
            argv_cmd, argv_args = command, list(args or [])
        elif isinstance(command, str):
            if args is None:
                parts = shlex.split(command)
                if not parts:
                    raise ValueError("empty command")
                argv_cmd, argv_args = parts[0], parts[1:]
            else:
                argv_cmd, argv_args = command, list(args)
        else:
            parts = list(command)
            if not parts:
                raise ValueError("empty command")
            argv_cmd, argv_args = parts[0], parts[1:] + list(args or [])
        if tag is not None and disposable:
            raise ValueError("tag= needs disposable=False: a disposable run keeps no image")
        self.command = argv_cmd
        self.args = argv_args
        self.shell = is_shell
        self.env = dict(env) if env else None
        self.cwd = cwd
        self.hostname = hostname
        self.stdin = stdin
        self.files = files
        self.timeout = timeout
        self.disposable = disposable
        self.truncate_output_at = truncate_output_at
        self.preserve_env = preserve_env
        self.tag = tag
        self.uid = uid
        self.gid = gid
        self.resources_limits = dict(resources_limits) if resources_limits else None

    def body(self, client: CoppiceSync, image_ref: str) -> dict[str, Any]:
        b: dict[str, Any] = {"image": image_ref, "command": self.command, "shell": self.shell,
                             "disposable": self.disposable}
        if self.args:
            b["args"] = self.args
        if self.env:
            b["env"] = self.env
        if self.cwd is not None:
            b["cwd"] = self.cwd
        if self.hostname is not None:
            b["hostname"] = self.hostname
        if self.stdin is not None:
            b["stdin"] = dict(encode_stream(self.stdin), close=True)
        if self.timeout is not None:
            b["timeout"] = max(1, int(math.ceil(self.timeout)))
        cap = self.truncate_output_at
        if cap is None:
            cap = client.settings.default_truncate_output_at
        if cap is not None:
            b["truncate_output_at"] = int(cap)
        if self.preserve_env:
            b["preserve_env"] = True
        if self.uid is not None:
            b["uid"] = self.uid
        if self.gid is not None:
            b["gid"] = self.gid
        if self.resources_limits:
            b["resources_limits"] = self.resources_limits
        if self.files:
            b["files"] = client.files._specs(self.files)
        return b


def _result_from_state(state: OperationState) -> RunResult:
    comp = state.completion or {}
    ex = state.exit
    if ex is None:  # no `exit` event for the main process: read the operation record
        rec = state.fetch_record()
        st = ((rec.get("metadata") or {}).get("result") or {}).get("state") or {}
        ex = {"code": st.get("exit_code", -1), "signal": st.get("signal", -1),
              "timed_out": bool(st.get("timed_out")), "_record": True}
    out = b"".join(c.value for c in state.chunks if c.stream_name == "stdout")
    err = b"".join(c.value for c in state.chunks if c.stream_name == "stderr")
    if ex.get("_record"):
        rec = state.record or {}
        res = ((rec.get("metadata") or {}).get("result") or {})
        resources = resources_from_record(res.get("resources") or {})
        elapsed = float((res.get("resources") or {}).get("elapsed_time") or 0.0)
    else:
        resources = {k: int(v) for k, v in (ex.get("resources") or {}).items()
                     if isinstance(v, (int, float))}
        elapsed = float(ex.get("duration_ms") or 0) / 1000.0
    size = comp.get("image_size_bytes")
    return RunResult(operation_uuid=state.op_uuid, status=str(comp.get("status", "")),
                     exit_code=int(ex.get("code", -1)), stdout_bytes=out, stderr_bytes=err,
                     signal=int(ex.get("signal", -1)), timed_out=bool(ex.get("timed_out")),
                     oom_killed=bool(ex.get("oom_killed")), elapsed_time=elapsed,
                     duration=float(comp.get("duration_ms") or 0) / 1000.0,
                     stdout_truncated="stdout" in state.truncated,
                     stderr_truncated="stderr" in state.truncated, resources=resources,
                     image_uuid=comp.get("result_image_uuid"),
                     image_size=int(size) if size is not None else None)


def _raise_for_completion(state: OperationState) -> None:
    comp = state.completion or {}
    status = comp.get("status")
    if status == "FAILED":
        raise FailedOperationError(comp.get("error"), state.op_uuid)
    if status == "CANCELLED":
        raise CancelledOperationError(state.op_uuid)


# ---------------------------------------------------------------------------------------------
# Images


class _ImageLike:
    """Read-only access to a filesystem state without running anything (``ls``, ``read``,
    ``download``, ``grep``, ``exists``), plus ``run``. Subclasses say which image they mean."""

    __slots__ = ()
    _client: CoppiceSync

    def _image(self) -> Image:
        raise NotImplementedError

    def _inspect_uuid(self) -> str:
        return self._image().resolve().uuid_or_raise()

    def ls(self, path: str = "/") -> list[FileEntry]:
        """Lists a directory of the image (``GET /v1/inspect/{uuid}/list``).

        >>> [e.name for e in image.ls("/etc")][:3]
        ['group', 'hostname', 'hosts']
        """
        j = self._client._get_json(f"/v1/inspect/{quote(self._inspect_uuid())}/list",
                                   {"path": path})
        return [FileEntry.from_json(j.get("path", path), f) for f in j.get("files") or ()]

    def ls_text(self, path: str = "/") -> str:
        """The listing as ``ls -alh``-style text."""
        r = self._client.transport.request(
            "GET", f"/v1/inspect/{quote(self._inspect_uuid())}/list",
            query={"path": path, "text": "1"})
        return r.body.decode("utf-8", "replace")

    def read(self, path: str) -> bytes:
        """The bytes of a file in the image (``GET /v1/inspect/{uuid}/download``)."""
        return self._client.transport.request(
            "GET", f"/v1/inspect/{quote(self._inspect_uuid())}/download",
            query={"path": path}).body

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file of the image decoded as text."""
        return self.read(path).decode(encoding, "replace")

    def exists(self, path: str) -> bool:
        """True when ``path`` exists in the image (a file, a directory or a link)."""
        try:
            self._client.transport.request(
                "HEAD", f"/v1/inspect/{quote(self._inspect_uuid())}/download",
                query={"path": path})
            return True
        except UnprocessableEntityError:
            return True  # a directory: it exists, it just cannot be downloaded
        except NotFoundError:
            return False

    def download(self, image_path: str,
                 local_path: str | os.PathLike[str] | None = None) -> pathlib.Path:
        """Copies a file of the image to the local disk (default: its basename in the current
        directory; a directory as ``local_path`` receives the file by its name). Streams, so
        large files do not sit in memory. Returns the local path."""
        dest = pathlib.Path(local_path) if local_path is not None else pathlib.Path(
            pathlib.PurePosixPath(image_path).name or "download")
        if dest.is_dir():
            dest = dest / pathlib.PurePosixPath(image_path).name
        self._client._download(f"/v1/inspect/{quote(self._inspect_uuid())}/download",
                               {"path": image_path}, dest)
        return dest

    def grep(self, pattern: str | Sequence[str], *, path: str | Sequence[str] | None = None,
             glob: str | Sequence[str] | None = None, max_count: int | None = None,
             max_total: int | None = None, case: str | None = None, before: int | None = None,
             after: int | None = None) -> GrepResult:
        """Searches the image's files server-side (ripgrep syntax; ``case`` is ``sensitive``,
        ``insensitive`` or ``smart``; ``before``/``after`` add context lines).

        >>> [m.path for m in image.grep("root", path="/etc")]
        ['/etc/group', '/etc/passwd']
        """
        q: dict[str, Any] = {
            "pattern": [pattern] if isinstance(pattern, str) else list(pattern),
            "path": [path] if isinstance(path, str) else (list(path) if path else None),
            "glob": [glob] if isinstance(glob, str) else (list(glob) if glob else None),
            "max_count": max_count, "max_total": max_total, "case": case,
            "before": before, "after": after}
        return GrepResult.from_json(self._client._get_json(
            f"/v1/inspect/{quote(self._inspect_uuid())}/grep", q))

    def export(self, local_path: str | os.PathLike[str]) -> pathlib.Path:
        """Writes the image as an OCI archive (Coppice extension ``GET /v1/images/{uuid}/export``);
        ``images.import_from(archive=...)`` or ``skopeo``/``podman`` read it back."""
        dest = pathlib.Path(local_path)
        self._client._download(f"/v1/images/{quote(self._inspect_uuid())}/export", None, dest)
        return dest


class Image(_ImageLike):
    """An immutable filesystem state on the server.

    ``uuid`` names it (None when the object was made from a tag and not resolved yet: runs then
    use ``tag:NAME``, which the server resolves). A run result additionally carries ``result``
    (a :class:`RunResult`) and the shortcuts ``stdout``, ``stderr``, ``exit_code``. Running
    twice from one image makes two independent branches; the image itself never changes.

        >>> base = client.images.use("busybox:latest")
        >>> env = base.run(shell="echo setup > /state", disposable=False).wait()
        >>> env.run(shell="cat /state").wait().stdout
        'setup\\n'
    """

    __slots__ = ("_client", "uuid", "tag", "created_at", "operation_uuid", "parent_uuid",
                 "depth", "layer_size", "public", "result", "parent")

    _client: CoppiceSync
    uuid: str | None
    tag: str | None
    created_at: _dt.datetime | None
    operation_uuid: str | None
    parent_uuid: str | None
    depth: int | None
    layer_size: int | None
    public: bool
    result: RunResult | None
    parent: Image | None

    def __init__(self, client: CoppiceSync, uuid: str | None, *, tag: str | None = None,
                 created_at: _dt.datetime | None = None, operation_uuid: str | None = None,
                 parent_uuid: str | None = None, depth: int | None = None,
                 layer_size: int | None = None, public: bool = False,
                 result: RunResult | None = None, parent: Image | None = None) -> None:
        init = object.__setattr__
        init(self, "_client", client)
        init(self, "uuid", uuid)
        init(self, "tag", tag)
        init(self, "created_at", created_at)
        init(self, "operation_uuid", operation_uuid)
        init(self, "parent_uuid", parent_uuid)
        init(self, "depth", depth)
        init(self, "layer_size", layer_size)
        init(self, "public", public)
        init(self, "result", result)
        init(self, "parent", parent)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Image is immutable (cannot set {name}); tag_as() and run() "
                             "return new objects")

    def __repr__(self) -> str:
        bits = [f"uuid={self.uuid!r}"]
        if self.tag:
            bits.append(f"tag={self.tag!r}")
        if self.result is not None:
            bits.append(f"exit_code={self.result.exit_code}")
        return f"Image({', '.join(bits)})"

    def _key(self) -> tuple[str | None, str | None, str | None]:
        return (self.uuid, self.tag if self.uuid is None else None,
                self.result.operation_uuid if self.result else None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _image(self) -> Image:
        return self

    @property
    def ref(self) -> str:
        """What a spawn's ``image`` field gets: the uuid, else ``tag:NAME``."""
        if self.uuid:
            return str(self.uuid)
        if self.tag:
            return f"tag:{self.tag}"
        raise DisposableImageRunError(
            "this is the result of a disposable run: it has no image (use disposable=False)")

    def uuid_or_raise(self) -> str:
        """The uuid; raises DisposableImageRunError when there is none."""
        if not self.uuid:
            raise DisposableImageRunError(
                "this is the result of a disposable run: it has no image (use disposable=False)")
        return self.uuid

    def resolve(self) -> Image:
        """This image with its uuid known: an image made from a tag is looked up (the tag's
        current image). Raises NotFoundError for an unknown tag."""
        if self.uuid or not self.tag:
            return self
        return self._client.images._by_tag(self.tag)

    def refresh(self) -> Image:
        """The image's current record (its tag may have moved since this object was made)."""
        j = self._client._get_json(f"/v1/inspect/{quote(self.resolve().uuid_or_raise())}/")
        img = _image_from_json(self._client, j, like=self)
        return img

    # -- run results
    def _require_result(self) -> RunResult:
        if self.result is None:
            raise ImageStateError(f"{self!r} is not the result of a run")
        return self.result

    @property
    def stdout(self) -> str:
        """The run's standard output (text). Only on run results."""
        return self._require_result().stdout

    @property
    def stderr(self) -> str:
        """The run's standard error (text). Only on run results."""
        return self._require_result().stderr

    @property
    def exit_code(self) -> int:
        """The run's exit code. Only on run results."""
        return self._require_result().exit_code

    @property
    def disposable(self) -> bool:
        """True for the result of a disposable run (no image to run from)."""
        return self.uuid is None and self.tag is None

    # -- running
    def run(self, command: Command = None, *, shell: str | bool | None = None,
            args: Sequence[str] | None = None, env: Mapping[str, str | None] | None = None,
            cwd: str | None = None, hostname: str | None = None,
            stdin: str | bytes | None = None, files: FilesArg = None,
            timeout: float | None = None, disposable: bool = True,
            truncate_output_at: int | None = None, preserve_env: bool = False,
            tag: str | None = None, uid: int | None = None, gid: int | None = None,
            resources_limits: Mapping[str, Any] | None = None,
            start: bool = True) -> PreparedRun:
        """Runs a command in a new sandbox on this image and returns a :class:`PreparedRun`.

        * ``command``: ``"ls -l /"`` (split like a shell would, but no shell runs) or
          ``["ls", "-l", "/"]``; or ``shell="ls | wc -l"`` for a shell expression.
        * ``args``, ``env`` (a None value unsets a variable), ``cwd``, ``hostname``,
          ``uid``, ``gid``; ``stdin`` (str or bytes, given whole).
        * ``files``: ``["local/script.sh"]`` (to ``/script.sh``), ``{"/opt/x": "local/x"}``,
          ``{"/opt/data": b"bytes"}`` or :class:`UploadFileSpec` objects (mode/uid/gid).
          Each distinct content is uploaded once (checked by SHA-256 first).
        * ``timeout`` (seconds), ``truncate_output_at`` (bytes per stream),
          ``resources_limits`` (``{"memory_bytes": ..., "pids": ..., "cpus": ...}``).
        * ``disposable=True`` (the default, as in ConTree) keeps no image; with
          ``disposable=False`` the result is a new image you can run from, and ``tag=`` names
          it. ``preserve_env=True`` stores ``env`` in that image for later runs.

        The run is submitted at once (one POST) so that several runs proceed in parallel while
        you wait for them one by one; ``start=False`` returns it unsubmitted (``.start()``,
        ``.wait()`` or iterating submits it).

            >>> ops = [image.run(shell=f"echo {i}") for i in range(3)]   # three sandboxes
            >>> [op.wait().stdout for op in ops]
            ['0\\n', '1\\n', '2\\n']
        """
        spec = _RunSpec(command, shell=shell, args=args, env=env, cwd=cwd, hostname=hostname,
                        stdin=stdin, files=files, timeout=timeout, disposable=disposable,
                        truncate_output_at=truncate_output_at, preserve_env=preserve_env,
                        tag=tag, uid=uid, gid=gid, resources_limits=resources_limits)
        if self.disposable:
            raise DisposableImageRunError(
                "this is the result of a disposable run: it has no image to run from (run it "
                "with disposable=False)")
        run = PreparedRun(self._client, spec, base=self)
        if start:
            run.start()
        return run

    def apply_files(self, *files: str | os.PathLike[str] | UploadFileSpec,
                    mapping: Mapping[str, FileSource | UploadFileSpec] | None = None) -> Image:
        """A new image with files added (runs ``true`` non-disposably with ``files``)."""
        spec: FilesArg = dict(mapping) if mapping else list(files)
        if mapping and files:
            spec = {**{self._client.files._dest_of(f): f for f in files}, **mapping}
        return self.run(["true"], files=spec, disposable=False).wait()

    def session(self) -> Session:
        """A mutable, linear history that starts here: ``session.run(...)`` advances it and
        ``session.rollback()`` rewinds it. The image itself is not changed."""
        return Session(self._client, self)

    # -- tags
    def tag_as(self, tag: str | None) -> Image:
        """Gives this image the tag (moving it from any other image); None removes the tag.
        Returns the updated image (this object is not changed)."""
        if tag is None:
            return self.untag()
        uuid = self.resolve().uuid_or_raise()
        j = self._client.transport.request("PATCH", f"/v1/images/{quote(uuid)}/tag",
                                           json_body={"tag": tag}).json()
        img = _image_from_json(self._client, j, like=self)
        return img

    def untag(self) -> Image:
        """Removes the image's tag. Returns the updated image."""
        uuid = self.resolve().uuid_or_raise()
        r = self._client.transport.request("DELETE", f"/v1/images/{quote(uuid)}/tag")
        j = r.json() if r.body else self._client._get_json(f"/v1/inspect/{quote(uuid)}/")
        img = _image_from_json(self._client, j, like=self)
        return img


class PreparedRun:
    """A run of a command on an image: submitted by ``start()`` (``image.run()`` does it
    unless ``start=False``), finished by ``wait()``.

    * ``wait(timeout=None)`` returns the result :class:`Image` (with ``.stdout``,
      ``.stderr``, ``.exit_code``, ``.result``); it raises :class:`FailedOperationError`,
      :class:`CancelledOperationError` or :class:`OperationTimedOutError`.
    * Iterating yields :class:`OutputChunk` objects live, from the event stream (resumed with
      ``Last-Event-Id`` if the connection drops; polling if the stream is unavailable).
    * ``.stdout``, ``.stderr``, ``.exit_code``, ``.result``, ``.uuid`` wait and return the
      result's.
    * ``cancel()`` stops it.

        >>> run = image.run(shell="for i in 1 2 3; do echo $i; sleep 0.1; done")
        >>> for chunk in run:
        ...     print(chunk.stream_name, chunk.text, end="")
        stdout 1
        stdout 2
        stdout 3
        >>> run.wait().exit_code
        0
    """

    def __init__(self, client: CoppiceSync, spec: _RunSpec | None, *,
                 base: Image | None = None, base_fn: Callable[[], Image] | None = None,
                 operation_uuid: str | None = None,
                 on_done: Callable[[PreparedRun], None] | None = None) -> None:
        self._client = client
        self._spec = spec
        self._base = base
        self._base_fn = base_fn
        self._on_done = on_done
        self._lock = threading.Lock()
        self._final_lock = threading.Lock()
        self._state: OperationState | None = None
        self._result: Image | None = None
        self._error: BaseException | None = None
        self._finished = False
        if operation_uuid is not None:
            self._state = OperationState(client.transport, operation_uuid)

    def __repr__(self) -> str:
        state = "done" if self._finished else ("running" if self._state else "not started")
        return f"PreparedRun(operation={self.operation_uuid!r}, {state})"

    @property
    def operation_uuid(self) -> str | None:
        """The server's operation id (None until started)."""
        return self._state.op_uuid if self._state else None

    @property
    def started(self) -> bool:
        return self._state is not None

    @property
    def done(self) -> bool:
        """True once the result (or the error) is known to this object."""
        return self._finished

    @property
    def base(self) -> Image | None:
        """The image the run started from (known once started)."""
        return self._base

    def start(self) -> PreparedRun:
        """Submits the run (``POST /v1/instances``) if it was not yet. Returns self."""
        with self._lock:
            if self._state is not None:
                return self
            if self._finished:  # an earlier start() failed
                assert self._error is not None
                raise self._error
            assert self._spec is not None
            try:
                if self._base_fn is not None:
                    self._base = self._base_fn()
                assert self._base is not None
                body = self._spec.body(self._client, self._base.ref)
                r = self._client.transport.request("POST", "/v1/instances", json_body=body)
            except BaseException as e:
                self._error, self._finished = e, True
                if self._on_done is not None:
                    self._on_done(self)
                raise
            loc = r.headers.get("location", "")
            op = r.json().get("uuid") or loc.rstrip("/").rsplit("/", 1)[-1]
            self._state = OperationState(self._client.transport, str(op))
        return self

    def _require_state(self) -> OperationState:
        self.start()
        assert self._state is not None
        return self._state

    def _finalize(self) -> Image:
        """Builds the result once the operation is done (once, whoever gets here first)."""
        with self._final_lock:
            if not self._finished:
                try:
                    self._result = self._build_result()
                except BaseException as e:  # noqa: B036 (stored and re-raised to every waiter)
                    self._error = e
                self._finished = True
                if self._on_done is not None:
                    self._on_done(self)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _build_result(self) -> Image:
        state = self._require_state()
        _raise_for_completion(state)
        result = _result_from_state(state)
        image = Image(self._client, result.image_uuid, operation_uuid=state.op_uuid,
                      parent_uuid=self._base.uuid if self._base else None, result=result,
                      parent=self._base)
        if result.timed_out:
            raise OperationTimedOutError(state.op_uuid, result, image)
        if self._spec is not None and self._spec.tag and image.uuid:
            image = image.tag_as(self._spec.tag)
        return image

    def wait(self, timeout: float | None = None) -> Image:
        """Waits for the end of the run and returns the result image. With ``timeout`` (s),
        raises :class:`WaitTimeoutError` when it is not done by then (the run goes on; wait
        again or ``cancel()``)."""
        if self._finished:
            return self._finalize()
        state = self._require_state()
        state.wait(timeout)
        return self._finalize()

    def __iter__(self) -> Iterator[OutputChunk]:
        state = self._require_state()
        yield from state.iter_chunks()
        self._finalize()

    def iter_output(self) -> Iterator[OutputChunk]:
        """Same as iterating the run: live output chunks, then the result is known."""
        return iter(self)

    def cancel(self) -> bool:
        """Cancels the run (``DELETE /v1/operations/{id}``). Returns False when it had already
        finished. A waiter then gets :class:`CancelledOperationError`."""
        if self._state is None:
            raise ImageStateError("the run was not started")
        return self._client.operations.cancel(self._state.op_uuid)

    def status(self) -> OperationInfo:
        """The operation's current record from the server."""
        return self._client.operations.get(self._require_state().op_uuid)

    # -- shortcuts to the result
    @property
    def result(self) -> RunResult:
        r = self.wait().result
        assert r is not None
        return r

    @property
    def stdout(self) -> str:
        return self.wait().stdout

    @property
    def stderr(self) -> str:
        return self.wait().stderr

    @property
    def exit_code(self) -> int:
        return self.wait().exit_code

    @property
    def uuid(self) -> str | None:
        """The result image's uuid (None for a disposable run). Waits."""
        return self.wait().uuid

    def run(self, command: Command = None, **kwargs: Any) -> PreparedRun:
        """Waits for this run, then runs on its result (``image.run(...).run(...)`` chains)."""
        return self.wait().run(command, **kwargs)


class ImportOperation:
    """An image import in progress (``images.start_import(...)``). ``wait()`` returns the
    :class:`Image`; ``cancel()`` stops it."""

    def __init__(self, client: CoppiceSync, operation_uuid: str) -> None:
        self._client = client
        self.operation_uuid = operation_uuid
        self._state = OperationState(client.transport, operation_uuid)

    def wait(self, timeout: float | None = None) -> Image:
        self._state.wait(timeout)
        _raise_for_completion(self._state)
        uuid = (self._state.completion or {}).get("result_image_uuid")
        if not uuid:
            uuid = self._state.fetch_record().get("result_image_uuid")
        if not uuid:
            raise FailedOperationError("the import produced no image", self.operation_uuid)
        img = self._client.images.get(str(uuid))
        return img

    def cancel(self) -> bool:
        return self._client.operations.cancel(self.operation_uuid)


class Session(_ImageLike):
    """A linear, mutable history over immutable images (kept by the SDK; the server has no
    session API). ``run()`` starts from the current image and, when the run finishes, the
    session moves to its result; ``rollback()`` moves back.

    * Runs default to ``disposable=False`` (a session is about keeping state); a run with
      ``disposable=True`` does not move the session.
    * Runs are sequential: a new ``run()`` first waits for the previous one (raising its error
      if nobody waited for it).
    * ``history`` is the tuple of states, oldest first; ``image`` (and ``uuid``) the current.

        >>> s = client.images.use("busybox:latest").session()
        >>> s.run(shell="echo 1 > /n").wait(); s.run(shell="echo 2 > /n").wait()
        >>> s.read_text("/n")
        '2\\n'
        >>> s.rollback(); s.read_text("/n")
        '1\\n'
    """

    def __init__(self, client: CoppiceSync, image: Image) -> None:
        self._client = client
        self._lock = threading.RLock()
        self._history: list[Image] = [image]
        self._pending: PreparedRun | None = None

    def __repr__(self) -> str:
        return f"Session(image={self.image!r}, depth={len(self._history) - 1})"

    def _image(self) -> Image:
        return self._settle()

    @property
    def image(self) -> Image:
        """The current image."""
        with self._lock:
            return self._history[-1]

    @property
    def uuid(self) -> str | None:
        return self.image.uuid

    @property
    def history(self) -> tuple[Image, ...]:
        """Every state of the session, oldest first (the last is the current image)."""
        with self._lock:
            return tuple(self._history)

    def _settle(self) -> Image:
        """Waits for the session's last run if it is still going (raising its error: nobody
        has seen it yet); returns the current image."""
        with self._lock:
            pending = self._pending
        if pending is not None and pending.started and not pending.done:
            pending.wait()
        return self.image

    def _base_after(self, previous: PreparedRun | None) -> Image:
        if previous is not None and not previous.done:
            previous.wait()
        return self.image

    def _done(self, run: PreparedRun) -> None:
        with self._lock:
            if self._pending is run:
                self._pending = None
            if run._result is not None and run._result.uuid is not None:
                self._history.append(run._result)

    def run(self, command: Command = None, *, disposable: bool = False,
            start: bool = True, **kwargs: Any) -> PreparedRun:
        """Like :meth:`Image.run` (same arguments) from the current image; when it finishes the
        session moves to its result. Waits for the previous run of the session first."""
        spec = _RunSpec(command, disposable=disposable, **kwargs)
        with self._lock:
            previous = self._pending
            run = PreparedRun(self._client, spec, base_fn=lambda: self._base_after(previous),
                              on_done=self._done)
            self._pending = run
        if start:
            run.start()
        return run

    def rollback(self, n: int = 1, *, to: Image | str | None = None) -> Image:
        """Moves the session back ``n`` states, or to the last state whose uuid is ``to``
        (an Image or a uuid). Returns the new current image."""
        self._settle()
        with self._lock:
            if to is not None:
                want = to.uuid if isinstance(to, Image) else to
                for i in range(len(self._history) - 1, -1, -1):
                    if self._history[i].uuid == want:
                        del self._history[i + 1:]
                        return self._history[-1]
                raise ValueError(f"{want} is not in this session's history")
            if n < 0 or n >= len(self._history):
                raise ValueError(f"cannot roll back {n} step(s): the history has "
                                 f"{len(self._history) - 1}")
            if n:
                del self._history[-n:]
            return self._history[-1]

    def checkout(self, image: Image) -> Image:
        """Moves the session to any image (recorded as a new state)."""
        self._settle()
        with self._lock:
            self._history.append(image)
            return image

    def fork(self) -> Session:
        """A new session starting at this one's current image (with a copy of the history)."""
        s = Session(self._client, self._settle())
        with self._lock:
            s._history = list(self._history)
        return s

    def tag_as(self, tag: str | None) -> Image:
        """Tags the current image."""
        return self._settle().tag_as(tag)


# ---------------------------------------------------------------------------------------------
# Managers


class ImagesManager:
    """``client.images``: find, import, list and tag images.

        >>> client.images.use("busybox:latest")          # no request unless strict=True
        >>> client.images(number=10, tagged=True)        # the 10 newest tagged images
        >>> for img in client.images: ...                 # every image, page by page
    """

    def __init__(self, client: CoppiceSync) -> None:
        self._client = client

    def __call__(self, number: int = 100, *, tagged: bool = False, since: TimeFilter = None,
                 until: TimeFilter = None, prefix: str | None = None) -> list[Image]:
        """Up to ``number`` images, newest first."""
        out: list[Image] = []
        for img in self.iter(tagged=tagged, since=since, until=until, prefix=prefix,
                             page_size=min(number, 1000) if number > 0 else None):
            if len(out) >= number:
                break
            out.append(img)
        return out

    def __iter__(self) -> Iterator[Image]:
        return self.iter()

    def list(self, *, limit: int = 100, offset: int = 0, tagged: bool = False,
             prefix: str | None = None, since: TimeFilter = None, until: TimeFilter = None,
             uuid: str | None = None) -> list[Image]:
        """One page of ``GET /v1/images`` (newest first). ``prefix`` filters by tag prefix
        (the exact tag comes first); ``since``/``until`` by creation time."""
        j = self._client._get_json("/v1/images", {
            "limit": limit, "offset": offset, "tagged": tagged, "tag": prefix,
            "since": time_filter(since), "until": time_filter(until), "uuid": uuid})
        return [_image_from_json(self._client, i) for i in j.get("images") or ()]

    def iter(self, *, tagged: bool = False, prefix: str | None = None, since: TimeFilter = None,
             until: TimeFilter = None, page_size: int | None = None) -> Iterator[Image]:
        """Every matching image, fetched page by page."""
        size = page_size or self._client.settings.images_list_batch_size
        offset = 0
        while True:
            page = self.list(limit=size, offset=offset, tagged=tagged, prefix=prefix,
                             since=since, until=until)
            yield from page
            if len(page) < size:
                return
            offset += size

    def get(self, uuid: str) -> Image:
        """The image record by uuid (``GET /v1/inspect/{uuid}/``); NotFoundError if unknown."""
        return _image_from_json(self._client,
                                self._client._get_json(f"/v1/inspect/{quote(uuid)}/"))

    def _by_tag(self, tag: str) -> Image:
        r = self._client.transport.request("GET", "/v1/inspect/", query={"tag": tag})
        loc = r.headers.get("location", "")
        uuid = loc.rstrip("/").rsplit("/", 1)[-1] if loc else None
        if r.status == 200 and r.body:  # a server that follows its own redirect
            return _image_from_json(self._client, r.json())
        if not uuid:
            raise NotFoundError(f"tag not found: {tag}", status=404)
        return self.get(uuid)

    def use(self, ref: str | Image, *, strict: bool = False) -> Image:
        """An image by uuid or tag (``"busybox:latest"``, ``"tag:busybox:latest"``). Without
        ``strict`` no request is made: a tag is resolved by the server at each run. With
        ``strict=True`` the image is looked up now (NotFoundError if it does not exist) and
        pinned to its uuid."""
        if isinstance(ref, Image):
            return ref.resolve() if strict else ref
        ref = ref.strip()
        if ref.startswith("tag:"):
            ref = ref[4:]
        elif ref.startswith(("docker://", "oci://")):
            ref = default_tag(ref)  # the tag an import of that reference gets
        if _is_uuid(ref):
            return self.get(ref) if strict else Image(self._client, ref.lower())
        if strict:
            return self._by_tag(ref)
        return Image(self._client, None, tag=ref)

    def oci(self, ref: str, *, tag: str | None = None, username: str | None = None,
            password: str | None = None, timeout: float | None = None,
            platform: str | None = None) -> Image:
        """The image for an OCI reference: the one already tagged so (``tag``, default the
        reference's own, e.g. ``python:3.12-slim``), else imported from the registry now.

            >>> img = client.images.oci("docker://127.0.0.1:5000/app:1")
        """
        want = tag or default_tag(ref)
        try:
            return self._by_tag(want)
        except NotFoundError:
            return self.import_from(ref, tag=want, username=username, password=password,
                                    timeout=timeout, platform=platform)

    docker = oci
    podman = oci
    pull_by_oci = oci

    def start_import(self, image: str | None = None, *,
                     archive: str | os.PathLike[str] | bytes | UploadedFile | None = None,
                     tag: str | None = None, username: str | None = None,
                     password: str | None = None, timeout: float | None = None,
                     platform: str | None = None) -> ImportOperation:
        """Starts an import (``POST /v1/images/import``) and returns it without waiting."""
        body: dict[str, Any] = {}
        if (image is None) == (archive is None):
            raise ValueError("import_from() needs a registry reference or archive=, not both")
        if image is not None:
            reg: dict[str, Any] = {"url": image}
            if username or password:
                reg["credentials"] = {"username": username or "", "password": password or ""}
            body["registry"] = reg
            body["tag"] = tag if tag is not None else default_tag(image)
        else:
            assert archive is not None
            f = archive if isinstance(archive, UploadedFile) else self._client.files.upload(
                archive)
            body["archive"] = {"file": f.uuid}
            if tag is not None:
                body["tag"] = tag
        if timeout is not None:
            body["timeout"] = max(1, int(round(timeout)))
        if platform:
            body["platform"] = platform
        r = self._client.transport.request("POST", "/v1/images/import", json_body=body)
        op = r.json().get("uuid") or r.headers.get("location", "").rstrip("/").rsplit("/", 1)[-1]
        return ImportOperation(self._client, str(op))

    def import_from(self, image: str | None = None, *,
                    archive: str | os.PathLike[str] | bytes | UploadedFile | None = None,
                    tag: str | None = None, username: str | None = None,
                    password: str | None = None, timeout: float | None = None,
                    platform: str | None = None) -> Image:
        """Imports an image and waits for it: from a registry (``"docker://ghcr.io/o/i:1"``,
        ``"python:3.12-slim"``; the tag defaults to the reference's) or from a local OCI /
        ``docker save`` archive (``archive="image.tar"``, a Coppice extension). Registry
        credentials go in ``username``/``password``.

            >>> img = client.images.import_from(archive="busybox.oci.tar", tag="bb:1")
        """
        return self.start_import(image, archive=archive, tag=tag, username=username,
                                 password=password, timeout=timeout, platform=platform).wait()

    def pull(self, ref: str, **kwargs: Any) -> Image:
        """Deprecated ConTree name of :meth:`oci`."""
        return self.oci(ref, **kwargs)


class FilesManager:
    """``client.files``: content-addressed uploads. Each content is sent at most once: the SDK
    asks ``GET /v1/files/{sha256}`` first and remembers what it uploaded.

        >>> f = client.files.upload(b"#!/bin/sh\\necho hi\\n")
        >>> image.run("/opt/hi.sh", files={"/opt/hi.sh": UploadFileSpec(f, mode=0o755)})
    """

    def __init__(self, client: CoppiceSync) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._by_sha: dict[str, UploadedFile] = {}
        self._path_sha: dict[tuple[str, int, int, int], str] = {}

    @staticmethod
    def _sha_of_path(p: pathlib.Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def upload(self, source: str | os.PathLike[str] | bytes | IO[bytes]) -> UploadedFile:
        """Uploads a local file, bytes or a binary file object, unless the server already has
        that content. Returns the :class:`UploadedFile` (uuid, sha256, size)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data: bytes | pathlib.Path = bytes(source)
            sha = hashlib.sha256(cast(bytes, data)).hexdigest()
        elif isinstance(source, (str, os.PathLike)):
            p = pathlib.Path(source)
            st = p.stat()
            key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
            with self._lock:
                cached = self._path_sha.get(key)
            sha = cached or self._sha_of_path(p)
            with self._lock:
                self._path_sha[key] = sha
            data = p
        else:
            data = source.read()
            sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._by_sha.get(sha)
        if known is not None:
            return known
        try:
            f = self.get(sha)
        except NotFoundError:
            r = self._client.transport.request(
                "POST", "/v1/files", body=data,
                headers={"Content-Type": "application/octet-stream"}, idempotent=True,
                timeout=max(self._client.settings.timeout, 600.0))
            f = UploadedFile.from_json(r.json())
        with self._lock:
            self._by_sha[sha] = f
        return f

    def get(self, sha256: str) -> UploadedFile:
        """The file record for a SHA-256 (NotFoundError if the server does not have it)."""
        return UploadedFile.from_json(self._client._get_json(f"/v1/files/{quote(sha256)}"))

    def exists(self, sha256: str) -> bool:
        """True when the server has content with this SHA-256 (``HEAD /v1/files/{sha}``)."""
        try:
            self._client.transport.request("HEAD", f"/v1/files/{quote(sha256)}")
            return True
        except NotFoundError:
            return False

    def list(self, *, limit: int = 100, offset: int = 0, since: TimeFilter = None,
             until: TimeFilter = None) -> list[UploadedFile]:
        """One page of ``GET /v1/files`` (newest first)."""
        j = self._client._get_json("/v1/files", {"limit": limit, "offset": offset,
                                                 "since": time_filter(since),
                                                 "until": time_filter(until)})
        return [UploadedFile.from_json(f) for f in j.get("files") or ()]

    def iter(self, *, since: TimeFilter = None, until: TimeFilter = None,
             page_size: int | None = None) -> Iterator[UploadedFile]:
        """Every file record, page by page."""
        size = page_size or self._client.settings.images_list_batch_size
        offset = 0
        while True:
            page = self.list(limit=size, offset=offset, since=since, until=until)
            yield from page
            if len(page) < size:
                return
            offset += size

    # -- run(files=...) support
    @staticmethod
    def _dest_of(item: Any) -> str:
        src = item.source if isinstance(item, UploadFileSpec) else item
        if isinstance(item, UploadFileSpec) and item.path:
            return item.path
        if isinstance(src, (str, os.PathLike)):
            return "/" + pathlib.Path(src).name
        raise ValueError(f"give a destination path for {type(src).__name__} content "
                         "(files={'/path': ...} or UploadFileSpec(..., path=...))")

    def _specs(self, files: FilesArg) -> dict[str, dict[str, Any]]:
        items: list[tuple[str, Any]]
        if isinstance(files, Mapping):
            items = list(files.items())
        else:
            items = [(self._dest_of(f), f) for f in files or ()]
        out: dict[str, dict[str, Any]] = {}
        for dest, item in items:
            spec = item if isinstance(item, UploadFileSpec) else UploadFileSpec(item)
            if not dest.startswith("/"):
                raise ValueError(f"file destinations must be absolute paths, not {dest!r}")
            src = spec.source
            mode = spec.mode
            if isinstance(src, UploadedFile):
                uploaded = src
            else:
                if mode is None and isinstance(src, (str, os.PathLike)):
                    mode = 0o755 if os.access(src, os.X_OK) else 0o644
                uploaded = self.upload(src)
            out[dest] = {"uuid": uploaded.uuid,
                         "mode": f"{mode if mode is not None else 0o644:04o}",
                         "uid": spec.uid, "gid": spec.gid}
        return out


class OperationsManager:
    """``client.operations``: list, inspect, follow and cancel operations."""

    def __init__(self, client: CoppiceSync) -> None:
        self._client = client

    def list(self, *, limit: int = 100, offset: int = 0, status: str | None = None,
             kind: str | None = None, since: TimeFilter = None,
             until: TimeFilter = None) -> list[OperationInfo]:
        """One page of ``GET /v1/operations`` (newest first)."""
        j = self._client._get_json("/v1/operations", {
            "limit": limit, "offset": offset, "status": status, "kind": kind,
            "since": time_filter(since), "until": time_filter(until)})
        return [OperationInfo.from_json(o) for o in j or ()]

    def get(self, uuid: str) -> OperationInfo:
        """The operation's record (live state while it runs)."""
        return OperationInfo.from_json(self._client._get_json(f"/v1/operations/{quote(uuid)}"))

    def cancel(self, uuid: str) -> bool:
        """Cancels an operation. Returns False when it had already finished (409)."""
        try:
            self._client.transport.request("DELETE", f"/v1/operations/{quote(uuid)}")
            return True
        except ConflictError:
            return False

    def attach(self, uuid: str) -> PreparedRun:
        """A :class:`PreparedRun` for a run started elsewhere (another process, the CLI):
        wait for it or iterate its output."""
        return PreparedRun(self._client, None, operation_uuid=uuid)


# ---------------------------------------------------------------------------------------------
# The client


class CoppiceSync:
    """The synchronous Coppice client (ConTree's ``ContreeSync``).

    Configuration comes from the arguments, then ``COPPICE_URL`` / ``COPPICE_TOKEN`` /
    ``COPPICE_PROJECT``, then the CLI's profile file (``$COPPICE_HOME/auth.ini``). Extra
    keyword arguments are :class:`CoppiceConfig` fields (``timeout=``, ``gzip=``, ...).

        >>> from coppice import CoppiceSync
        >>> with CoppiceSync(base_url="http://127.0.0.1:8080", token=token) as client:
        ...     print(client.images.use("busybox:latest").run("echo hi").wait().stdout)
        hi

    It is thread-safe: share one client between threads (connections are pooled).
    """

    def __init__(self, config: CoppiceConfig | None = None, *, base_url: str | None = None,
                 token: str | None = None, project: str | None = None,
                 profile: str | None = None, **settings: Any) -> None:
        if settings:
            import dataclasses
            config = dataclasses.replace(config or CoppiceConfig(), **settings)
        self._resolved: ResolvedConfig = resolve_config(
            config, base_url=base_url, token=token, project=project, profile=profile,
            fallback_env=self._fallback_env())
        self.settings = self._resolved.settings
        self.transport = Transport(self._resolved)
        self.images = ImagesManager(self)
        self.files = FilesManager(self)
        self.operations = OperationsManager(self)

    @staticmethod
    def _fallback_env() -> dict[str, tuple[str, ...]]:
        return {}

    @property
    def base_url(self) -> str:
        return self._resolved.base_url

    @property
    def project(self) -> str | None:
        return self._resolved.project

    def whoami(self) -> WhoAmI:
        """The token's identity, permissions and limits (``GET /v1/whoami``)."""
        return WhoAmI.from_json(self._get_json("/v1/whoami"))

    def close(self) -> None:
        """Closes pooled connections."""
        self.transport.close()

    def __enter__(self) -> CoppiceSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- helpers
    def _get_json(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return self.transport.request("GET", path, query=query).json()

    def _download(self, path: str, query: Mapping[str, Any] | None,
                  dest: pathlib.Path) -> None:
        tmp = dest.with_name(dest.name + ".part")
        with self.transport.stream("GET", path, query=query) as s:
            with open(tmp, "wb") as f:
                while True:
                    data = s.read(self.settings.timeout)
                    if not data:
                        break
                    f.write(data)
            s.finish()
        os.replace(tmp, dest)

    def _executor(self, workers: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coppice")

