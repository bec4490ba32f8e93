"""The built-in echo provider: a deterministic reply, streamed word by word.

The reply to turn N is exactly ``f"Echo (turn {N}): {text}"`` where ``text``
is the newest message. Each delta is one word with the whitespace before it,
so the deltas join to the reply exactly. Usage counts whitespace-separated
words. Every option is honoured: ``stop`` cuts the reply, ``max_tokens`` caps
the deltas; sampling options change nothing in a deterministic reply.
``delayMs`` sleeps before each delta; with no delay the stream never suspends
(it is the hot path of the throughput benchmark).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import ClassVar, Final

from ..agents.types import OPTION_NAMES, Finish, ProviderCall, ProviderEvent, TextDelta, Usage
from . import Provider, count_words

# One word with the whitespace before it; the last word also takes the
# whitespace after it, so that nothing of the reply is lost.
_DELTA: Final = re.compile(r"\s*\S+(?:\s+\Z)?")


# Replies up to this many characters are cut into words at once (C speed).
_EAGER_CHARS: Final = 64 * 1024


def echo_reply(call: ProviderCall) -> str:
    """The whole reply to ``call``, before ``stop`` and ``max_tokens`` apply."""
    text = call.messages[-1].content if call.messages else ""
    return f"Echo (turn {call.turn}): {text}"


def split_deltas(text: str) -> list[str]:
    """``text`` cut into word deltas; ``"".join(split_deltas(t)) == t`` for any ``t`` with a word."""
    deltas = _DELTA.findall(text)
    return deltas if deltas or not text else [text]     # all whitespace: one delta


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _prompt_words(call: ProviderCall) -> int | None:
    """The prompt's words, or None when it is too long to count in one step of the loop."""
    chars = len(call.system)
    words = len(call.system.split()) if chars else 0
    for message in call.messages:
        chars += len(message.content)
        if chars > _EAGER_CHARS:
            return None
        words += len(message.content.split())
    return words


class EchoProvider(Provider):
    """Replies ``Echo (turn N): <newest message>``; needs no configuration (config may be None)."""

    api: ClassVar[str] = "echo"
    supported_options: ClassVar[frozenset[str]] = frozenset(OPTION_NAMES)

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield the reply as word deltas, then ``Usage`` (word counts), then ``Finish``.

        ``Finish("length")`` when ``max_tokens`` cut the reply short, else
        ``Finish("stop")`` (natural end or a stop string).
        """
        options = call.options
        reply = echo_reply(call)
        if options.stop:
            reply, _ = cut_at_stop(reply, options.stop)
        limit = options.max_tokens
        reason = "stop"
        delay = self.config.delay_ms / 1000 if self.config is not None else 0.0
        if len(reply) <= _EAGER_CHARS and not delay:
            # The hot path of the throughput benchmark: no await per delta, so a
            # consumer reading 100k+ events/s pays no event-loop round trip for each.
            deltas = split_deltas(reply)
            if limit is not None and len(deltas) > limit:
                deltas, reason = deltas[:limit], "length"
            for delta in deltas:
                yield TextDelta(delta)
            words = len(deltas) if _DELTA.match(reply) else 0
        else:
            # Words are cut lazily: a reply of ten million words is never one list
            # (the runtime stops a reply past its byte limit long before).
            words = 0
            for match in _DELTA.finditer(reply):
                if limit is not None and words >= limit:
                    reason = "length"
                    break
                words += 1
                if delay > 0:
                    await asyncio.sleep(delay)
                yield TextDelta(match.group())
            if not words and reply:
                yield TextDelta(reply)      # all whitespace: one delta of no word
        prompt = _prompt_words(call)
        if prompt is None:
            prompt = await count_words(call.system, *(m.content for m in call.messages))
        yield Usage(prompt, words)
        yield Finish(reason)
