"""The command provider (api "command"): a local program writes the reply to its stdout.

Runs ``config.command`` (an argv list, never through a shell) with the
inherited environment plus ``EQUABOT_MODEL`` and ``EQUABOT_TURN``, writes the
newest user message to its stdin and closes it, and streams stdout as
``TextDelta`` (UTF-8 decoded incrementally: a character split across reads is
never split across deltas). A non-zero exit fails the run with the tail of
stderr. ``config.timeout`` bounds each silence on stdout and the wait for the
exit (of the program itself: helpers it left holding its stdin or stderr do
not delay the reply). However the stream ends — finished, failed, closed or
cancelled — the program's process group ends with it: a program still running
gets SIGTERM, then SIGKILL after a short grace, and is reaped; helpers left in
its group get SIGKILL. Sampling options are not supported.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import ClassVar, Final

from ..config import ProviderConfig
from ..errors import ConfigError, UpstreamError, UpstreamTimeout
from ..agents.types import Finish, ProviderCall, ProviderEvent, TextDelta, Usage
from . import Provider, count_words

READ_CHUNK_BYTES: Final = 64 * 1024
MAX_STDERR_TAIL_BYTES: Final = 2048
# Seconds a process may take to exit after SIGTERM before SIGKILL (systemd
# waits 90 s; a reply generator has nothing worth that long to save).
TERMINATE_TIMEOUT: Final = 0.5
# Seconds to wait for stderr to end after the process exited (a detached
# grandchild may hold it open).
STDERR_TIMEOUT: Final = 0.5
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")


class CommandProvider(Provider):
    """Streams the stdout of ``config.command`` as the reply.

    Usage is an approximation: whitespace-separated words of the prompt sent
    and of the reply, as echo counts them.
    """

    api: ClassVar[str] = "command"
    supported_options: ClassVar[frozenset[str]] = frozenset()
    accepts: ClassVar[frozenset[str]] = frozenset()
    config: ProviderConfig

    def __init__(self, name: str, config: ProviderConfig | None) -> None:
        if config is None or not config.command:
            raise ConfigError(f"models.providers.{name}.command",
                              "api \"command\" needs the program to run, as a list of strings")
        super().__init__(name, config)

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield stdout as ``TextDelta`` pieces, then ``Usage``, then ``Finish("stop")``.

        Raises ``UpstreamError`` if the program cannot start or exits non-zero
        (``"exit status N: <stderr tail>"``), ``UpstreamTimeout`` when stdout
        stays silent, or the exit does not come, for ``config.timeout`` seconds.
        """
        prompt = next((m.text() for m in reversed(call.messages) if m.role == "user"), "")
        proc, child = await self._spawn(call)
        tail = bytearray()
        feeder = asyncio.create_task(_feed(proc.stdin, prompt.encode("utf-8")))
        collector = asyncio.create_task(_collect_tail(proc.stderr, tail))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        reply: list[str] = []
        try:
            while data := await self._read(proc):
                # The decoder holds back the bytes of an unfinished character.
                if text := decoder.decode(data):
                    reply.append(text)
                    yield TextDelta(text)
            if text := decoder.decode(b"", final=True):
                reply.append(text)
                yield TextDelta(text)
            code = await self._wait(proc, child)
            await asyncio.wait({collector}, timeout=STDERR_TIMEOUT)
            if code != 0:
                raise UpstreamError(self.name, _exit_detail(code, tail))
        finally:
            feeder.cancel()
            collector.cancel()
            await _terminate(proc, child)
        yield Usage(await count_words(prompt), await count_words("".join(reply)))
        yield Finish("stop")

    async def _spawn(self, call: ProviderCall) -> tuple[asyncio.subprocess.Process, _Child]:
        env = {**os.environ, "EQUABOT_MODEL": call.model, "EQUABOT_TURN": str(call.turn)}
        loop = asyncio.get_running_loop()
        try:
            # asyncio.create_subprocess_exec, with a protocol that also tells
            # when the program exits. A session of its own makes the child a
            # process-group leader, so that the end reaches its helpers too.
            transport, child = await loop.subprocess_exec(
                lambda: _Child(loop), *self.config.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, start_new_session=True)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UpstreamError(self.name, f"cannot start the command: {reason}") from exc
        return asyncio.subprocess.Process(transport, child, loop), child

    async def _read(self, proc: asyncio.subprocess.Process) -> bytes:
        try:
            async with asyncio.timeout(self.config.timeout):
                return await proc.stdout.read(READ_CHUNK_BYTES)     # type: ignore[union-attr]
        except TimeoutError:
            raise UpstreamTimeout(self.name, self.config.timeout, "read") from None

    async def _wait(self, proc: asyncio.subprocess.Process, child: _Child) -> int:
        await asyncio.wait({child.exited}, timeout=self.config.timeout)
        if proc.returncode is None:
            raise UpstreamTimeout(self.name, self.config.timeout, "exit")
        return proc.returncode


class _Child(asyncio.subprocess.SubprocessStreamProtocol):
    """The protocol of asyncio's ``Process``, plus ``exited``: a future done when the program exits.

    ``Process.wait()`` returns only once every pipe is closed as well, and a
    helper the program started (in its group or out of it) may hold one open
    for as long as it runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_CHUNK_BYTES, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = transport      # type: ignore[assignment]

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write the prompt and close stdin; a program that does not read it is no error."""
    if stdin is None:
        return
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


async def _collect_tail(stream: asyncio.StreamReader | None, tail: bytearray) -> None:
    """Read ``stream`` to its end, keeping its last ``MAX_STDERR_TAIL_BYTES`` in ``tail``."""
    if stream is None:
        return
    while chunk := await stream.read(READ_CHUNK_BYTES):
        tail += chunk
        if len(tail) > MAX_STDERR_TAIL_BYTES:
            del tail[:-MAX_STDERR_TAIL_BYTES]


def _exit_detail(code: int, tail: bytes) -> str:
    status = f"exit status {code}"
    if code < 0:
        try:
            status = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            status = f"killed by signal {-code}"
    text = _CONTROL.sub(" ", tail.decode("utf-8", "replace")).strip().lstrip("\ufffd")
    return f"{status}: {text}" if text else status


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass        # the group is gone (its ID cannot be reused while it has members)


async def _terminate(proc: asyncio.subprocess.Process, child: _Child) -> None:
    """End the process group: SIGTERM to a program still running, SIGKILL to the group
    after the grace (or at once if cancelled again), also when the program had exited
    and left helpers behind; then close our ends of its pipes.

    Waits for the program's exit, never for its pipes: a helper that left the group
    (``setsid``) and holds them would otherwise hold the run's slot for as long as it runs.
    """
    try:
        if not child.exited.done():
            _signal_group(proc.pid, signal.SIGTERM)
            await asyncio.wait({child.exited}, timeout=TERMINATE_TIMEOUT)
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        if child.exited.done() and child.transport is not None:
            child.transport.close()
    if not child.exited.done():
        await asyncio.wait({child.exited})      # SIGKILL was sent: the child watcher reaps it now
        if child.transport is not None:
            child.transport.close()
