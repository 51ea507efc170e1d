"""Plain data objects returned by the SDK (immutable dataclasses)."""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import os
import re
from typing import Any, Iterator, Mapping, Union

_FRACTION = re.compile(r"\.(\d+)")


def parse_time(value: Any) -> _dt.datetime | None:
    """Parses the server's RFC 3339 timestamps (``Z`` or an offset, 0-9 fractional digits)."""
    if not isinstance(value, str) or not value:
        return None
    s = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    s = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], s, count=1)
    try:
        return _dt.datetime.fromisoformat(s)
    except ValueError:
        return None


def decode_stream(obj: Any) -> bytes:
    """Decodes a ``StreamRepr`` (``{"value", "encoding"}``) or an event payload to bytes."""
    if not isinstance(obj, Mapping):
        return b""
    value = obj.get("value") or ""
    if obj.get("encoding") == "base64":
        return base64.b64decode(value)
    return str(value).encode("utf-8", "surrogateescape")


def encode_stream(data: str | bytes) -> dict[str, str]:
    """Encodes bytes the way the clients do: ``ascii`` when every byte is printable ASCII or
    tab/newline/CR, else ``base64``."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if all(32 <= b < 127 or b in (9, 10, 13) for b in raw):
        return {"value": raw.decode("ascii"), "encoding": "ascii"}
    return {"value": base64.b64encode(raw).decode("ascii"), "encoding": "base64"}


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """A piece of live output: ``value`` (bytes) from ``stream_name`` (``"stdout"`` or
    ``"stderr"``), as it arrived on the event stream."""

    value: bytes
    stream_name: str

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (undecodable bytes replaced)."""
        return self.value.decode("utf-8", "replace")

    @property
    def stream(self) -> str:
        return self.stream_name


# Names of the 15 per-process counters of an `exit` event, and where the operation record's
# `metadata.result.resources` keeps the same number (None: the record does not have it).
_RESOURCE_FROM_RECORD: dict[str, tuple[str, float] | None] = {
    "user_time_us": ("user_cpu_time", 1e6), "sys_time_us": ("system_cpu_time", 1e6),
    "max_rss_kb": ("max_rss", 1), "shared_memory": ("shared_memory", 1),
    "unshared_memory": ("unshared_memory", 1), "swaps": ("swaps", 1),
    "minor_faults": ("page_faults", 1), "major_faults": ("page_faults_io", 1),
    "voluntary_ctx_switches": ("voluntary_switches", 1),
    "involuntary_ctx_switches": ("involuntary_switches", 1),
    "block_input_ops": ("block_input", 1), "block_output_ops": ("block_output", 1),
    "ipc_msgs_sent": None, "ipc_msgs_received": None, "signals_received": ("signals", 1),
}


def resources_from_record(res: Mapping[str, Any]) -> dict[str, int]:
    """Maps an ``InstanceResult.resources`` object to the ``exit`` event's counter names."""
    out: dict[str, int] = {}
    for name, src in _RESOURCE_FROM_RECORD.items():
        if src is None:
            out[name] = 0
        else:
            out[name] = int(round(float(res.get(src[0]) or 0) * src[1]))
    return out


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The outcome of one run (ConTree's ``ContreeResult`` plus metrics).

    ``stdout``/``stderr`` are decoded text (UTF-8, invalid bytes replaced); the exact bytes are
    in ``stdout_bytes``/``stderr_bytes``. ``exit_code`` is the command's status (a non-zero
    exit is a normal result, not an exception); ``signal`` is -1 unless a signal ended it.
    ``elapsed_time`` is the command's wall time and ``duration`` the whole operation's (both
    seconds). ``resources`` holds the kernel's counters for the main process
    (``user_time_us``, ``sys_time_us``, ``max_rss_kb``, faults, context switches, block I/O).
    """

    operation_uuid: str
    status: str
    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    signal: int = -1
    timed_out: bool = False
    oom_killed: bool = False
    elapsed_time: float = 0.0
    duration: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    resources: Mapping[str, int] = dataclasses.field(default_factory=dict)
    image_uuid: str | None = None
    image_size: int | None = None
    cost: float = 0.0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        """True when either stream hit ``truncate_output_at``."""
        return self.stdout_truncated or self.stderr_truncated

    @property
    def ok(self) -> bool:
        """Exit code 0 and no timeout."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def user_cpu_time(self) -> float:
        """User CPU seconds of the main process."""
        return self.resources.get("user_time_us", 0) / 1e6

    @property
    def system_cpu_time(self) -> float:
        """System CPU seconds of the main process."""
        return self.resources.get("sys_time_us", 0) / 1e6

    @property
    def max_rss_kb(self) -> int:
        """Peak resident memory of the main process (KiB)."""
        return self.resources.get("max_rss_kb", 0)


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    """A file stored on the server, addressed by its SHA-256. Pass it in ``run(files=...)``."""

    uuid: str
    sha256: str
    size: int
    created_at: _dt.datetime | None = None

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> UploadedFile:
        return cls(str(j["uuid"]), str(j["sha256"]), int(j.get("size") or 0),
                   parse_time(j.get("created_at")))


FileSource = Union[str, "os.PathLike[str]", bytes, UploadedFile]


@dataclasses.dataclass(frozen=True)
class UploadFileSpec:
    """A file to put into a run: ``source`` (a local path, bytes, or an :class:`UploadedFile`),
    its ``path`` in the sandbox (default ``/<basename of source>``), ``mode``, ``uid``,
    ``gid``."""

    source: FileSource
    path: str | None = None
    mode: int | None = None
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One entry of an image directory listing (``image.ls(path)``)."""

    name: str
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    owner: str
    group: str
    mtime: int
    nlink: int
    is_dir: bool
    is_file: bool
    is_symlink: bool
    symlink_to: str

    @property
    def permissions(self) -> int:
        """The permission bits (``mode & 0o7777``)."""
        return self.mode & 0o7777

    @classmethod
    def from_json(cls, directory: str, j: Mapping[str, Any]) -> FileEntry:
        name = str(j.get("path", ""))
        full = name if name.startswith("/") else directory.rstrip("/") + "/" + name
        return cls(name=name.rsplit("/", 1)[-1], path=full, size=int(j.get("size") or 0),
                   mode=int(j.get("mode") or 0), uid=int(j.get("uid") or 0),
                   gid=int(j.get("gid") or 0), owner=str(j.get("owner", "")),
                   group=str(j.get("group", "")), mtime=int(j.get("mtime") or 0),
                   nlink=int(j.get("nlink") or 0), is_dir=bool(j.get("is_dir")),
                   is_file=bool(j.get("is_regular")), is_symlink=bool(j.get("is_symlink")),
                   symlink_to=str(j.get("symlink_to") or ""))


@dataclasses.dataclass(frozen=True)
class GrepMatch:
    """One matching (or context) line: ``path``, ``line_number`` (1-based), ``line_text`` and
    ``submatches`` as ``(start, end, text)`` byte offsets into the line."""

    path: str
    line_number: int
    line_text: str
    submatches: tuple[tuple[int, int, str], ...]
    absolute_offset: int = 0
    type: str = "match"


@dataclasses.dataclass(frozen=True)
class GrepResult:
    """The answer of ``image.grep(...)``: iterate it for :class:`GrepMatch` objects."""

    matches: tuple[GrepMatch, ...]
    truncated: bool
    patterns: tuple[str, ...]

    def __iter__(self) -> Iterator[GrepMatch]:
        return iter(self.matches)

    def __len__(self) -> int:
        return len(self.matches)

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> GrepResult:
        ms = tuple(GrepMatch(path=str(m.get("path", "")), line_number=int(m.get("line_number")
                                                                           or 0),
                             line_text=str(m.get("line_text", "")),
                             submatches=tuple((int(s.get("start", 0)), int(s.get("end", 0)),
                                               str(s.get("text", "")))
                                              for s in m.get("submatches") or ()),
                             absolute_offset=int(m.get("absolute_offset") or 0),
                             type=str(m.get("type", "match")))
                   for m in j.get("matches") or ())
        return cls(ms, bool(j.get("truncated")), tuple(j.get("patterns") or ()))


@dataclasses.dataclass(frozen=True)
class OperationInfo:
    """An operation record (``GET /v1/operations/{id}``): ``kind`` is ``instance``,
    ``image_import`` or ``image_push``; ``status`` one of PENDING, ASSIGNED, EXECUTING, SUCCESS,
    FAILED, CANCELLED. ``raw`` is the whole JSON object."""

    uuid: str
    kind: str
    status: str
    error: str | None
    created_at: _dt.datetime | None
    duration: float
    image_uuid: str | None
    result_image_uuid: str | None
    raw: Mapping[str, Any]

    @property
    def done(self) -> bool:
        return self.status in ("SUCCESS", "FAILED", "CANCELLED")

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> OperationInfo:
        return cls(uuid=str(j.get("uuid")), kind=str(j.get("kind", "")),
                   status=str(j.get("status", "")), error=j.get("error"),
                   created_at=parse_time(j.get("created_at")),
                   duration=float(j.get("duration") or 0.0), image_uuid=j.get("image_uuid"),
                   result_image_uuid=j.get("result_image_uuid"), raw=dict(j))


@dataclasses.dataclass(frozen=True)
class WhoAmI:
    """``GET /v1/whoami``: the token's identity, permissions and limits."""

    token_uuid: str
    project: str | None
    permissions: Mapping[str, bool]
    limits: Mapping[str, int]
    token_expiration: int | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> WhoAmI:
        return cls(str(j.get("token_uuid", "")), j.get("project"),
                   dict(j.get("permissions") or {}), dict(j.get("limits") or {}),
                   j.get("token_expiration"), dict(j))
