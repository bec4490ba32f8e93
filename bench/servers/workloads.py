"""The request bodies of every scenario, in one place, byte for byte.

``run.py`` writes them to files for wrk and the load client; the raw asyncio
server keys its canned answers on them. Word counts are chosen so the echo
reply ``Echo (turn 1): <message>`` has the length each scenario asks for.
"""

from __future__ import annotations

import json

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu").split()
ECHO_PREFIX_WORDS = 3                       # "Echo", "(turn", "1):"


def message_of(reply_words: int) -> str:
    """A user message whose echo reply has exactly ``reply_words`` words."""
    n = reply_words - ECHO_PREFIX_WORDS
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def _body(model: str, message: str, stream: bool) -> bytes:
    data: dict = {"model": model}
    if stream:
        data["stream"] = True
    data["messages"] = [{"role": "user", "content": message}]
    return json.dumps(data, separators=(",", ":")).encode()


# S1: a short chat turn, answered as one JSON object (12-word reply).
COMPLETE = _body("equabot", message_of(12), stream=False)
# S2: a streamed 256-word reply with no delay between words.
STREAM_WORDS = 256
STREAM = _body("equabot", message_of(STREAM_WORDS), stream=True)
# S3: slow streams, 20 words, 50 ms before each (agent "slow" / peers' SLOW_MODEL).
SLOW_WORDS = 20
SLOW = _body("equabot:slow", message_of(SLOW_WORDS), stream=True)
# S4: the gateway's agent "proxy" (openai-completions to the local upstream).
PROXY = _body("equabot:proxy", message_of(12), stream=True)
# S4 upstream: the reply the upstream streams back (role, words, finish, usage, [DONE]).
UPSTREAM_WORDS = 12


def sse_events(words: int) -> int:
    """``data:`` events of a streamed echo: role, one per word, finish, [DONE]."""
    return words + 3


BODIES = {"complete": COMPLETE, "stream": STREAM, "slow": SLOW, "proxy": PROXY}
