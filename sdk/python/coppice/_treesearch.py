"""Tree-search helpers: run many branches from one image, bounded in parallel."""
from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Awaitable, Iterable, Literal, Mapping, Sequence, Union, overload

from ._async import AsyncImage
from ._sync import Image

CommandSpec = Union[str, Sequence[str], Mapping[str, Any]]


def _run_kwargs(cmd: CommandSpec, common: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cmd, str):
        return {**common, "shell": cmd}
    if isinstance(cmd, Mapping):
        return {**common, **cmd}
    return {**common, "command": list(cmd)}


@overload
def fan_out(image: Image, commands: Iterable[CommandSpec], *, max_parallel: int = ...,
            return_exceptions: Literal[False] = ..., **run_kwargs: Any) -> list[Image]: ...


@overload
def fan_out(image: Image, commands: Iterable[CommandSpec], *, max_parallel: int = ...,
            return_exceptions: Literal[True], **run_kwargs: Any
            ) -> list[Image | BaseException]: ...


@overload
def fan_out(image: AsyncImage, commands: Iterable[CommandSpec], *, max_parallel: int = ...,
            return_exceptions: Literal[False] = ..., **run_kwargs: Any
            ) -> Awaitable[list[AsyncImage]]: ...


@overload
def fan_out(image: AsyncImage, commands: Iterable[CommandSpec], *, max_parallel: int = ...,
            return_exceptions: Literal[True], **run_kwargs: Any
            ) -> Awaitable[list[AsyncImage | BaseException]]: ...


def fan_out(image: Image | AsyncImage, commands: Iterable[CommandSpec], *,
            max_parallel: int = 8, return_exceptions: bool = False,
            **run_kwargs: Any) -> Any:
    """Runs every command as its own branch of ``image``, at most ``max_parallel`` at a time,
    and returns the results in the order of ``commands``.

    A command is a shell string (``"make test"``), an argv list (``["make", "test"]``) or a
    dict of :meth:`Image.run` arguments (``{"shell": "...", "env": {...}}``); ``run_kwargs``
    apply to all (e.g. ``disposable=False`` to keep each branch's image, ``timeout=60``).
    With ``return_exceptions=True`` a failed branch gives its exception in the list instead of
    raising. For an :class:`AsyncImage` it returns a coroutine.

        >>> results = fan_out(base, [f"./solve --seed {i}" for i in range(16)],
        ...                   max_parallel=8, disposable=False)
        >>> best = min(results, key=lambda r: r.exit_code)
    """
    if max_parallel < 1:
        raise ValueError("max_parallel must be at least 1")
    specs = [_run_kwargs(c, run_kwargs) for c in commands]
    if isinstance(image, AsyncImage):
        return _fan_out_async(image, specs, max_parallel, return_exceptions)
    sync_image: Image = image
    out: list[Image | BaseException] = []
    if not specs:
        return out

    def one(kw: dict[str, Any]) -> Image:
        return sync_image.run(**kw).wait()

    with ThreadPoolExecutor(max_workers=min(max_parallel, len(specs)),
                            thread_name_prefix="coppice-fan-out") as pool:
        futures: list[Future[Image]] = [pool.submit(one, kw) for kw in specs]
        try:
            for f in futures:
                try:
                    out.append(f.result())
                except Exception as e:  # noqa: BLE001 (returned or re-raised below)
                    if not return_exceptions:
                        raise
                    out.append(e)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


async def _fan_out_async(image: AsyncImage, specs: list[dict[str, Any]], max_parallel: int,
                         return_exceptions: bool) -> list[Any]:
    sem = asyncio.Semaphore(max_parallel)

    async def one(kw: dict[str, Any]) -> AsyncImage:
        async with sem:
            return await image.run(**kw)

    return list(await asyncio.gather(*(one(kw) for kw in specs),
                                     return_exceptions=return_exceptions))
