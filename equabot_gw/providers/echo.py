"""The built-in echo provider: a deterministic reply, streamed word by word.

The reply to turn N is exactly ``f"Echo (turn {N}): {text}"`` where ``text``
is the newest message's text. Each delta is one word with the whitespace
before it, so the deltas join to the reply exactly; a run nobody watches
(``ProviderCall.watched`` False, without ``delayMs``) gets the reply as one
delta. Usage counts whitespace-separated words. ``delayMs`` sleeps before
each delta; with no delay the stream never suspends (the hot path of the
throughput benchmarks).

Deterministic tools, reasoning and choices, for tests and demos:

- **Tool calls.** When the request offers tools and every line of the newest
  user text is ``/call NAME {json}`` naming an offered tool (with a JSON
  object), the reply calls those tools with exactly that JSON text as
  arguments (the first only when ``parallel_tool_calls`` is false; none when
  ``tool_choice`` is "none"): each call streamed as ``ToolCallDelta``
  fragments, id ``call_<run>_<n>``, then ``Finish("tool_calls")``. A
  ``tool_choice`` naming a tool gets exactly one call of it (with its
  ``/call`` line's arguments, else ``{}``); "required" without ``/call``
  lines calls the first offered tool with ``{}``, as a forced model would.
- **Tool results.** When the newest messages are tool results, the reply is
  ``Echo (turn N): tool NAME returned: <content>`` (results joined by "; ").
- **Reasoning.** With ``reasoning_effort`` (other than "none"), the reply is
  preceded by the reasoning ``Thinking (<effort>) about: <text>``.
- **Log probabilities.** A deterministic model is certain of each word:
  with ``logprobs`` each delta comes with a logprob of 0 (and, with
  ``top_logprobs``, itself as its only alternative).
- **Choices.** With ``n`` > 1 every further choice is the same reply.

Every other option is honoured too: ``stop`` cuts the reply, ``max_tokens``
caps the deltas, and sampling options (temperature, penalties, ``logit_bias``,
``top_k``...) change nothing in a deterministic reply. ``response_format`` is
not: an echo is not JSON.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final

from .. import safejson
from ..agents.types import (
    OPTION_NAMES, ChoiceEvent, Finish, Logprobs, Message, ProviderCall, ProviderEvent,
    ReasoningDelta, TextDelta, ToolCallDelta, Usage,
)
from . import Provider, count_words

# One word with the whitespace before it; the last word also takes the
# whitespace after it, so that nothing of the reply is lost.
_DELTA: Final = re.compile(r"\s*\S+(?:\s+\Z)?")
# A line of a tool-calling user text: /call NAME {json object}.
_CALL: Final = re.compile(r"/call[ \t]+([A-Za-z0-9_-]{1,64})[ \t]+(\{.*\})[ \t]*", re.S)
# Characters of arguments per tool-call fragment: a call arrives in pieces,
# as from a real model, so that clients' accumulation is exercised.
_ARGUMENT_FRAGMENT_CHARS: Final = 16


# Replies up to this many characters are cut into words at once (C speed).
_EAGER_CHARS: Final = 64 * 1024


def _tool_results(messages: tuple[Message, ...]) -> list[Message]:
    """The tool results at the end of ``messages``, in order."""
    results: list[Message] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.append(message)
    results.reverse()
    return results


def echo_reply(call: ProviderCall) -> str:
    """The whole reply to ``call``, before ``stop`` and ``max_tokens`` apply."""
    newest = call.messages[-1] if call.messages else None
    if newest is None:
        return f"Echo (turn {call.turn}): "
    if newest.role == "tool":
        echoed = "; ".join(f"tool {m.name or m.tool_call_id or '?'} returned: {m.text()}"
                           for m in _tool_results(call.messages))
        return f"Echo (turn {call.turn}): {echoed}"
    content = newest.content
    return f"Echo (turn {call.turn}): {content if type(content) is str else newest.text()}"


def split_deltas(text: str) -> list[str]:
    """``text`` cut into word deltas; ``"".join(split_deltas(t)) == t`` for any ``t`` with a word."""
    deltas = _DELTA.findall(text)
    return deltas if deltas or not text else [text]     # all whitespace: one delta


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def tool_calls_asked(call: ProviderCall) -> list[tuple[str, str]] | None:
    """The (name, JSON arguments) of the calls echo makes for ``call``, or None for a text reply.

    Only when tools are offered and ``tool_choice`` is not "none". The calls
    are the newest user text's when every non-blank line of it is ``/call
    NAME {json}`` with an offered NAME and a JSON object (checked within
    safejson's depth bound). ``tool_choice`` forces a call as OpenAI's models
    make one: naming a tool, exactly one call of it (its ``/call`` line's
    arguments, else ``{}``); "required", the text's calls, else the first
    offered tool with ``{}``, whatever the newest message is.
    """
    options = call.options
    if not options.tools or options.tool_choice == "none" or not call.messages:
        return None
    calls = _call_lines(call.messages[-1], {tool.name for tool in options.tools})
    forced = options.forced_tool()
    if forced is not None:
        return [next((c for c in calls or () if c[0] == forced), (forced, "{}"))]
    if not calls:
        if options.tool_choice != "required":
            return None
        calls = [(options.tools[0].name, "{}")]
    return calls[:1] if options.parallel_tool_calls is False else calls


def _call_lines(newest: Message, offered: set[str]) -> list[tuple[str, str]] | None:
    """The ``/call NAME {json}`` lines of a user message, if every line is one."""
    if newest.role != "user":
        return None
    calls = []
    for line in newest.text().splitlines():
        if not line.strip():
            continue
        match = _CALL.fullmatch(line.strip())
        if match is None or match.group(1) not in offered:
            return None
        try:
            arguments = safejson.loads(match.group(2))
        except ValueError:
            return None
        if not isinstance(arguments, dict):
            return None
        calls.append((match.group(1), match.group(2)))
    return calls or None


async def _prompt_tokens(call: ProviderCall) -> int:
    """The prompt's words, counted off the loop's step when the prompt is long."""
    prompt = _prompt_words(call)
    return prompt if prompt is not None else await _count_prompt(call)


async def _count_prompt(call: ProviderCall) -> int:
    return await count_words(call.system, *(m.text() for m in call.messages))


def _prompt_words(call: ProviderCall) -> int | None:
    """The prompt's words, or None when it is too long to count in one step of the loop."""
    chars = len(call.system)
    words = len(call.system.split()) if chars else 0
    for message in call.messages:
        text = message.content if type(message.content) is str else message.text()
        chars += len(text)
        if chars > _EAGER_CHARS:
            return None
        words += len(text.split())
    return words


class EchoProvider(Provider):
    """Replies ``Echo (turn N): <newest message>``; needs no configuration (config may be None)."""

    api: ClassVar[str] = "echo"
    supported_options: ClassVar[frozenset[str]] = frozenset(OPTION_NAMES) - {"response_format"}

    async def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """Yield the reply as word deltas (one delta when unwatched), then ``Usage``
        (word counts), then ``Finish``.

        ``Finish("length")`` when ``max_tokens`` cut the reply short,
        ``Finish("tool_calls")`` for tool calls, else ``Finish("stop")``
        (natural end or a stop string). Reasoning, log probabilities and
        further choices as the module docstring says.
        """
        options = call.options
        if options.tools:
            asked = tool_calls_asked(call)
            if asked is not None:
                async for event in self._calls(call, asked):
                    yield event
                return
        thinking = ""
        if options.reasoning_effort is not None and options.reasoning_effort != "none":
            thinking = (f"Thinking ({options.reasoning_effort}) about: "
                        f"{call.messages[-1].text() if call.messages else ''}")
            yield ReasoningDelta(thinking)
        reply = echo_reply(call)
        if options.stop:
            reply, _ = cut_at_stop(reply, options.stop)
        limit = options.max_tokens
        reason = "stop"
        delay = self.config.delay_ms / 1000 if self.config is not None else 0.0
        if options.logprobs or (options.n or 1) > 1:
            async for event in self._rich(call, reply, delay, thinking):
                yield event
            return
        if len(reply) <= _EAGER_CHARS and not delay and not call.watched:
            # Nobody follows the reply word by word: it goes whole (cut after
            # ``limit`` words, the deltas a watcher would have had joined).
            words = len(reply.split())
            if limit is not None and words > limit:
                reply, words, reason = "".join(split_deltas(reply)[:limit]), limit, "length"
            if reply:
                yield TextDelta(reply)
        elif len(reply) <= _EAGER_CHARS and not delay:
            # The hot path of the streaming benchmark: no await per delta, so a
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
        prompt = _prompt_words(call)       # _prompt_tokens inline: the hot path's one await less
        if prompt is None:
            prompt = await _count_prompt(call)
        yield Usage(prompt, words)
        yield Finish(reason)

    async def _rich(self, call: ProviderCall, reply: str, delay: float,
                    thinking: str) -> AsyncIterator[ProviderEvent]:
        """The reply with log probabilities, and/or as ``n`` choices (each further one
        reasoning ``thinking`` first, as choice 0 did); then ``Usage`` and ``Finish``."""
        options = call.options
        limit, logprobs, top_logprobs, n = options.max_tokens, options.logprobs, options.top_logprobs, options.n or 1
        deltas = [m.group() for m in _DELTA.finditer(reply)] or ([reply] if reply else [])
        reason = "stop"
        if limit is not None and len(deltas) > limit:
            deltas, reason = deltas[:limit], "length"
        words = sum(1 for d in deltas if not d.isspace())
        for index in range(n):
            if index and thinking:
                yield ChoiceEvent(index, ReasoningDelta(thinking))
            for delta in deltas:
                if delay > 0:
                    await asyncio.sleep(delay)
                events: list[Any] = [TextDelta(delta)]
                if logprobs:
                    events.append(Logprobs((_certain(delta, top_logprobs),), 64 + 4 * len(delta)))
                for event in events:
                    yield event if index == 0 else ChoiceEvent(index, event)
            if index:
                yield ChoiceEvent(index, Finish(reason))
        yield Usage(await _prompt_tokens(call), words * n)
        yield Finish(reason)

    async def _calls(self, call: ProviderCall, asked: list[tuple[str, str]]) -> AsyncIterator[ProviderEvent]:
        """Tool calls ``asked`` (for every choice of ``n``), then ``Usage`` and ``Finish("tool_calls")``."""
        run = call.run_id or "echo"
        n = call.options.n or 1
        words = 0
        for choice in range(n):
            for number, (name, arguments) in enumerate(asked):
                call_id = f"call_{run}_{number}" if choice == 0 else f"call_{run}_{choice}_{number}"
                fragments = [arguments[i:i + _ARGUMENT_FRAGMENT_CHARS]
                             for i in range(0, len(arguments), _ARGUMENT_FRAGMENT_CHARS)]
                events: list[Any] = [ToolCallDelta(number, call_id, name, "")]
                events.extend(ToolCallDelta(number, None, None, fragment) for fragment in fragments)
                for event in events:
                    yield event if choice == 0 else ChoiceEvent(choice, event)
                words += 1 + len(arguments.split())
            if choice:
                yield ChoiceEvent(choice, Finish("tool_calls"))
        yield Usage(await _prompt_tokens(call), words)
        yield Finish("tool_calls")


def _certain(token: str, top_logprobs: int | None) -> dict[str, Any]:
    """A token the model was certain of: logprob 0, itself its only alternative."""
    entry: dict[str, Any] = {"token": token, "logprob": 0.0, "bytes": list(token.encode("utf-8", "surrogatepass"))}
    entry["top_logprobs"] = [dict(entry)] if top_logprobs else []
    return entry
