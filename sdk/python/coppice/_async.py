"""The asyncio client: :class:`Coppice` (ConTree's ``Contree``).

It has the same methods as :class:`CoppiceSync`, awaited. Blocking HTTP runs in the client's
own thread pool (``async_max_workers`` threads, created on demand), so the event loop never
blocks and every feature of the synchronous client (resumed event streams, retries, the
connection pool) is shared. Differences from the synchronous client:

* ``image.run(...)`` is lazy: nothing is sent until the run is awaited, ``await run.start()``
  is called, or its output is iterated (``async for chunk in run``). Run many at once with
  ``asyncio.gather(*(image.run(...) for ...))``.
* Cancelling a task that awaits a run (``asyncio.wait_for`` timing out, ``task.cancel()``)
  cancels the run on the server too.
"""
from __future__ import annotations

import asyncio
import functools
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from typing import (IO, Any, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence,
                    TypeVar)

from ._config import CoppiceConfig
from ._errors import ImageStateError
from ._models import (FileEntry, FileSource, GrepResult, OperationInfo, OutputChunk, RunResult,
                      UploadedFile, UploadFileSpec, WhoAmI)
from ._sync import (Command, CoppiceSync, FilesArg, Image, ImportOperation, PreparedRun,
                    Session, TimeFilter, _ImageLike, _RunSpec)

T = TypeVar("T")
_END = object()


class Coppice:
    """The asyncio Coppice client. Same configuration as :class:`CoppiceSync`.

        >>> import asyncio
        >>> from coppice import Coppice
        >>> async def main() -> None:
        ...     async with Coppice(base_url=url, token=token) as client:
        ...         base = await client.images.use("busybox:latest")
        ...         results = await asyncio.gather(*(base.run(shell=f"echo {i}")
        ...                                          for i in range(3)))
        ...         print([r.stdout for r in results])
        >>> asyncio.run(main())
        ['0\\n', '1\\n', '2\\n']
    """

    def __init__(self, config: CoppiceConfig | None = None, *, base_url: str | None = None,
                 token: str | None = None, project: str | None = None,
                 profile: str | None = None, **settings: Any) -> None:
        self.sync = self._sync_class()(config, base_url=base_url, token=token, project=project,
                                       profile=profile, **settings)
        self.settings = self.sync.settings
        self._pool = ThreadPoolExecutor(max_workers=self.settings.async_max_workers,
                                        thread_name_prefix="coppice-async")
        self.images = AsyncImagesManager(self)
        self.files = AsyncFilesManager(self)
        self.operations = AsyncOperationsManager(self)

    @staticmethod
    def _sync_class() -> type[CoppiceSync]:
        return CoppiceSync

    @property
    def base_url(self) -> str:
        return self.sync.base_url

    @property
    def project(self) -> str | None:
        return self.sync.project

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _wrap(self, img: Image) -> AsyncImage:
        return AsyncImage(self, img)

    async def whoami(self) -> WhoAmI:
        """The token's identity, permissions and limits."""
        return await self._call(self.sync.whoami)

    async def aclose(self) -> None:
        """Closes pooled connections and the thread pool."""
        self.close()

    def close(self) -> None:
        self.sync.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Coppice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class _AsyncImageLike:
    """The read-only calls shared by :class:`AsyncImage` and :class:`AsyncSession`."""

    _client: Coppice

    def _target(self) -> _ImageLike:
        raise NotImplementedError

    async def ls(self, path: str = "/") -> list[FileEntry]:
        """Lists a directory of the image."""
        return await self._client._call(self._target().ls, path)

    async def ls_text(self, path: str = "/") -> str:
        """The listing as ``ls -alh``-style text."""
        return await self._client._call(self._target().ls_text, path)

    async def read(self, path: str) -> bytes:
        """The bytes of a file of the image."""
        return await self._client._call(self._target().read, path)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file of the image as text."""
        return await self._client._call(self._target().read_text, path, encoding)

    async def exists(self, path: str) -> bool:
        """True when the path exists in the image."""
        return await self._client._call(self._target().exists, path)

    async def download(self, image_path: str,
                       local_path: str | os.PathLike[str] | None = None) -> pathlib.Path:
        """Copies a file of the image to the local disk."""
        return await self._client._call(self._target().download, image_path, local_path)

    async def grep(self, pattern: str | Sequence[str], **kwargs: Any) -> GrepResult:
        """Searches the image's files (same arguments as :meth:`Image.grep`)."""
        return await self._client._call(self._target().grep, pattern, **kwargs)

    async def export(self, local_path: str | os.PathLike[str]) -> pathlib.Path:
        """Writes the image as an OCI archive."""
        return await self._client._call(self._target().export, local_path)


class AsyncImage(_AsyncImageLike):
    """An immutable image (the asyncio form of :class:`Image`). Attributes are the same;
    calls that talk to the server are coroutines, and ``run()`` returns an awaitable
    :class:`AsyncPreparedRun`."""

    def __init__(self, client: Coppice, image: Image) -> None:
        self._client = client
        self.sync = image

    def _target(self) -> _ImageLike:
        return self.sync

    def __repr__(self) -> str:
        return "Async" + repr(self.sync)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AsyncImage):
            return NotImplemented
        return self.sync == other.sync

    def __hash__(self) -> int:
        return hash(self.sync)

    uuid = property(lambda self: self.sync.uuid, doc="The image's uuid (None if disposable).")
    tag = property(lambda self: self.sync.tag, doc="The image's tag, if any.")
    created_at = property(lambda self: self.sync.created_at)
    operation_uuid = property(lambda self: self.sync.operation_uuid)
    parent_uuid = property(lambda self: self.sync.parent_uuid)
    depth = property(lambda self: self.sync.depth)
    layer_size = property(lambda self: self.sync.layer_size)
    public = property(lambda self: self.sync.public)
    disposable = property(lambda self: self.sync.disposable)
    ref = property(lambda self: self.sync.ref)

    @property
    def result(self) -> RunResult | None:
        """The :class:`RunResult` of the run that made this object (None otherwise)."""
        return self.sync.result

    @property
    def stdout(self) -> str:
        return self.sync.stdout

    @property
    def stderr(self) -> str:
        return self.sync.stderr

    @property
    def exit_code(self) -> int:
        return self.sync.exit_code

    @property
    def parent(self) -> AsyncImage | None:
        return AsyncImage(self._client, self.sync.parent) if self.sync.parent else None

    def run(self, command: Command = None, *, shell: str | bool | None = None,
            args: Sequence[str] | None = None, env: Mapping[str, str | None] | None = None,
            cwd: str | None = None, hostname: str | None = None,
            stdin: str | bytes | None = None, files: FilesArg = None,
            timeout: float | None = None, disposable: bool = True,
            truncate_output_at: int | None = None, preserve_env: bool = False,
            tag: str | None = None, uid: int | None = None, gid: int | None = None,
            resources_limits: Mapping[str, Any] | None = None) -> AsyncPreparedRun:
        """Prepares a run (same arguments as :meth:`Image.run`); await it for the result."""
        run = self.sync.run(command, shell=shell, args=args, env=env, cwd=cwd,
                            hostname=hostname, stdin=stdin, files=files, timeout=timeout,
                            disposable=disposable, truncate_output_at=truncate_output_at,
                            preserve_env=preserve_env, tag=tag, uid=uid, gid=gid,
                            resources_limits=resources_limits, start=False)
        return AsyncPreparedRun(self._client, run)

    def session(self) -> AsyncSession:
        """A linear, mutable history starting at this image."""
        return AsyncSession(self._client, self.sync.session())

    def uuid_or_raise(self) -> str:
        """The uuid; raises DisposableImageRunError when there is none."""
        return self.sync.uuid_or_raise()

    async def resolve(self) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.resolve))

    async def refresh(self) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.refresh))

    async def tag_as(self, tag: str | None) -> AsyncImage:
        """Tags the image (None removes the tag); returns the updated image."""
        return self._client._wrap(await self._client._call(self.sync.tag_as, tag))

    async def untag(self) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.untag))

    async def apply_files(self, *files: str | os.PathLike[str] | UploadFileSpec,
                          mapping: Mapping[str, FileSource | UploadFileSpec] | None = None
                          ) -> AsyncImage:
        """A new image with files added."""
        return self._client._wrap(await self._client._call(self.sync.apply_files, *files,
                                                           mapping=mapping))


class AsyncPreparedRun:
    """A run (the asyncio form of :class:`PreparedRun`): ``await run`` (or
    ``await run.wait()``) gives the result :class:`AsyncImage`; ``async for chunk in run``
    streams its output live; ``await run.start()`` submits it without waiting."""

    def __init__(self, client: Coppice, run: PreparedRun) -> None:
        self._client = client
        self.sync = run

    def __repr__(self) -> str:
        return "Async" + repr(self.sync)

    @property
    def operation_uuid(self) -> str | None:
        return self.sync.operation_uuid

    @property
    def started(self) -> bool:
        return self.sync.started

    @property
    def done(self) -> bool:
        return self.sync.done

    @property
    def base(self) -> AsyncImage | None:
        """The image the run started from (known once started)."""
        b = self.sync.base
        return self._client._wrap(b) if b is not None else None

    @property
    def uuid(self) -> str | None:
        """The result image's uuid, once the run was awaited."""
        return self._finished().uuid

    def run(self, command: Command = None, **kwargs: Any) -> AsyncPreparedRun:
        """A run on this run's result (same arguments as :meth:`AsyncImage.run`): awaiting it
        waits for this run first, so ``await image.run(...).run(...)`` chains."""
        spec = _RunSpec(command, **kwargs)
        return AsyncPreparedRun(self._client, PreparedRun(self._client.sync, spec,
                                                          base_fn=self.sync.wait))

    async def start(self) -> AsyncPreparedRun:
        """Submits the run if it was not yet."""
        if not self.sync.started:
            await self._client._call(self.sync.start)
        return self

    async def wait(self, timeout: float | None = None) -> AsyncImage:
        """Waits for the result. Cancelling the waiting task cancels the run."""
        try:
            img = await self._client._call(self.sync.wait, timeout)
        except asyncio.CancelledError:
            if self.sync.started and not self.sync.done:
                self._client._pool.submit(self._cancel_quietly)
            raise
        return self._client._wrap(img)

    def _cancel_quietly(self) -> None:
        try:
            self.sync.cancel()
        except Exception:  # noqa: BLE001 (best effort: the waiter is gone)
            pass

    def __await__(self) -> Generator[Any, None, AsyncImage]:
        return self.wait().__await__()

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        await self.start()
        it: Iterator[OutputChunk] = iter(self.sync)
        while True:
            chunk = await self._client._call(next, it, _END)
            if chunk is _END:
                return
            assert isinstance(chunk, OutputChunk)
            yield chunk

    async def cancel(self) -> bool:
        """Cancels the run; False if it had already finished."""
        return await self._client._call(self.sync.cancel)

    async def status(self) -> OperationInfo:
        return await self._client._call(self.sync.status)

    def _finished(self) -> Image:
        if not self.sync.done:
            raise ImageStateError("the run has not finished: await it first")
        return self.sync.wait()

    @property
    def result(self) -> RunResult | None:
        """The result once the run was awaited."""
        return self._finished().result

    @property
    def stdout(self) -> str:
        return self._finished().stdout

    @property
    def stderr(self) -> str:
        return self._finished().stderr

    @property
    def exit_code(self) -> int:
        return self._finished().exit_code


class AsyncSession(_AsyncImageLike):
    """The asyncio form of :class:`Session`."""

    def __init__(self, client: Coppice, session: Session) -> None:
        self._client = client
        self.sync = session

    def _target(self) -> _ImageLike:
        return self.sync

    def __repr__(self) -> str:
        return "Async" + repr(self.sync)

    @property
    def image(self) -> AsyncImage:
        return self._client._wrap(self.sync.image)

    @property
    def uuid(self) -> str | None:
        return self.sync.uuid

    @property
    def history(self) -> tuple[AsyncImage, ...]:
        return tuple(self._client._wrap(i) for i in self.sync.history)

    def run(self, command: Command = None, *, disposable: bool = False,
            **kwargs: Any) -> AsyncPreparedRun:
        """Prepares a run from the current image; the session advances when it finishes."""
        return AsyncPreparedRun(self._client, self.sync.run(command, disposable=disposable,
                                                            start=False, **kwargs))

    async def rollback(self, n: int = 1, *, to: AsyncImage | Image | str | None = None
                       ) -> AsyncImage:
        target = to.sync if isinstance(to, AsyncImage) else to
        return self._client._wrap(await self._client._call(self.sync.rollback, n, to=target))

    async def checkout(self, image: AsyncImage | Image) -> AsyncImage:
        img = image.sync if isinstance(image, AsyncImage) else image
        return self._client._wrap(await self._client._call(self.sync.checkout, img))

    async def fork(self) -> AsyncSession:
        return AsyncSession(self._client, await self._client._call(self.sync.fork))

    async def tag_as(self, tag: str | None) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.tag_as, tag))


class AsyncImportOperation:
    """An import in progress: ``await op.wait()`` gives the :class:`AsyncImage`."""

    def __init__(self, client: Coppice, op: ImportOperation) -> None:
        self._client = client
        self.sync = op
        self.operation_uuid = op.operation_uuid

    async def wait(self, timeout: float | None = None) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.wait, timeout))

    def __await__(self) -> Generator[Any, None, AsyncImage]:
        return self.wait().__await__()

    async def cancel(self) -> bool:
        return await self._client._call(self.sync.cancel)


class AsyncImagesManager:
    """``client.images`` of the asyncio client (see :class:`ImagesManager`)."""

    def __init__(self, client: Coppice) -> None:
        self._client = client
        self.sync = client.sync.images

    async def __call__(self, number: int = 100, *, tagged: bool = False,
                       since: TimeFilter = None, until: TimeFilter = None,
                       prefix: str | None = None) -> list[AsyncImage]:
        imgs = await self._client._call(self.sync, number, tagged=tagged, since=since,
                                        until=until, prefix=prefix)
        return [self._client._wrap(i) for i in imgs]

    async def list(self, **kwargs: Any) -> list[AsyncImage]:
        """One page of images (same arguments as :meth:`ImagesManager.list`)."""
        return [self._client._wrap(i) for i in await self._client._call(self.sync.list,
                                                                        **kwargs)]

    async def iter(self, *, tagged: bool = False, prefix: str | None = None,
                   since: TimeFilter = None, until: TimeFilter = None,
                   page_size: int | None = None) -> AsyncIterator[AsyncImage]:
        """Every matching image, page by page."""
        size = page_size or self._client.settings.images_list_batch_size
        offset = 0
        while True:
            page = await self.list(limit=size, offset=offset, tagged=tagged, prefix=prefix,
                                   since=since, until=until)
            for img in page:
                yield img
            if len(page) < size:
                return
            offset += size

    def __aiter__(self) -> AsyncIterator[AsyncImage]:
        return self.iter()

    async def get(self, uuid: str) -> AsyncImage:
        return self._client._wrap(await self._client._call(self.sync.get, uuid))

    async def use(self, ref: str | AsyncImage | Image, *, strict: bool = False) -> AsyncImage:
        """An image by uuid or tag (see :meth:`ImagesManager.use`)."""
        r = ref.sync if isinstance(ref, AsyncImage) else ref
        if not strict:
            return self._client._wrap(self.sync.use(r))
        return self._client._wrap(await self._client._call(self.sync.use, r, strict=True))

    async def oci(self, ref: str, **kwargs: Any) -> AsyncImage:
        """The image for an OCI reference, imported if no image has its tag yet."""
        return self._client._wrap(await self._client._call(self.sync.oci, ref, **kwargs))

    docker = oci
    podman = oci
    pull_by_oci = oci
    pull = oci

    async def start_import(self, image: str | None = None, **kwargs: Any
                           ) -> AsyncImportOperation:
        op = await self._client._call(self.sync.start_import, image, **kwargs)
        return AsyncImportOperation(self._client, op)

    async def import_from(self, image: str | None = None, **kwargs: Any) -> AsyncImage:
        """Imports from a registry or an archive and waits (see
        :meth:`ImagesManager.import_from`)."""
        return self._client._wrap(await self._client._call(self.sync.import_from, image,
                                                           **kwargs))


class AsyncFilesManager:
    """``client.files`` of the asyncio client (see :class:`FilesManager`)."""

    def __init__(self, client: Coppice) -> None:
        self._client = client
        self.sync = client.sync.files

    async def upload(self, source: str | os.PathLike[str] | bytes | IO[bytes]) -> UploadedFile:
        return await self._client._call(self.sync.upload, source)

    async def get(self, sha256: str) -> UploadedFile:
        return await self._client._call(self.sync.get, sha256)

    async def exists(self, sha256: str) -> bool:
        return await self._client._call(self.sync.exists, sha256)

    async def list(self, **kwargs: Any) -> list[UploadedFile]:
        """One page of file records (same arguments as :meth:`FilesManager.list`)."""
        return await self._client._call(self.sync.list, **kwargs)

    async def iter(self, *, since: TimeFilter = None, until: TimeFilter = None,
                   page_size: int | None = None) -> AsyncIterator[UploadedFile]:
        """Every file record, page by page."""
        size = page_size or self._client.settings.images_list_batch_size
        offset = 0
        while True:
            page = await self.list(limit=size, offset=offset, since=since, until=until)
            for f in page:
                yield f
            if len(page) < size:
                return
            offset += size


class AsyncOperationsManager:
    """``client.operations`` of the asyncio client (see :class:`OperationsManager`)."""

    def __init__(self, client: Coppice) -> None:
        self._client = client
        self.sync = client.sync.operations

    async def list(self, **kwargs: Any) -> list[OperationInfo]:
        return await self._client._call(self.sync.list, **kwargs)

    async def get(self, uuid: str) -> OperationInfo:
        return await self._client._call(self.sync.get, uuid)

    async def cancel(self, uuid: str) -> bool:
        return await self._client._call(self.sync.cancel, uuid)

    def attach(self, uuid: str) -> AsyncPreparedRun:
        return AsyncPreparedRun(self._client, self.sync.attach(uuid))
