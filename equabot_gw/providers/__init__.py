"""Model providers: the ``Provider`` contract, the registry by ``api``, and the HTTP glue they share.

A provider turns one ``ProviderCall`` into an async stream of events:
``TextDelta``, ``ReasoningDelta``, ``ToolCallDelta`` and ``Logprobs`` in the
order the reply makes them (choices past the first wrapped in
``ChoiceEvent``), then one ``Usage`` if the upstream reported it, then one
``Finish`` ("tool_calls" when the reply ends in calls). Tool-call fragments
carry the call's index; its id and name come with its first fragment. It raises only ``UpstreamError`` and its subclasses (and
``ApiError`` from ``check_model``); foreign errors are mapped where they enter.
Closing or cancelling the stream stops the provider at once: sockets are
closed and child processes killed in ``finally`` blocks. Providers know
nothing of HTTP endpoints, sessions or transcripts. The HTTP providers reach
upstreams through ``net.client`` only, and never put an API key or a
configured header value into an error or a log line.

Besides the built-in ``api``s here, an embedding program's own functions
are providers (``python.py``: the public, versioned form of this contract,
the registry of ``register_provider``, and the adapter that holds them to it).
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import importlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

from .. import compact_json, safejson
from ..config import DEFAULT_MAX_REPLY_BYTES, ProviderConfig
from ..errors import (
    ApiError, ClientConnectError, ClientTimeout, ConfigError, ConnectionClosed, HTTPProtocolError,
    UpstreamError, UpstreamRejected, UpstreamTimeout,
)
from ..net import grammar
from ..agents.types import INPUT_KINDS, Message, ProviderCall, ProviderEvent, content_chars

__all__ = [
    "Provider", "HTTPProvider", "create_provider", "ServerSentEvent", "EventStreamDecoder",
    "word_count", "count_words", "finish_word",
]

if TYPE_CHECKING:
    from ..net import client as http_client


def finish_word(reason: str) -> str:
    """An upstream's finish reason as the gateway keeps it: a word of at most
    ``MAX_FINISH_REASON_CHARS`` letters, digits and ``_.:-`` as it is; anything
    else (an upstream's garbage, which may be megabytes long) is "stop"."""
    return reason if _FINISH_REASON.fullmatch(reason) else "stop"

# Error bodies are read up to this many bytes; the message is what matters.
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
# Longest error detail kept from an upstream (characters).
MAX_DETAIL_CHARS: Final = 1000
# An upstream's OpenAI error ``code`` and ``param`` reach clients as they are,
# so only short words of these characters are kept (OpenAI's are like
# "context_length_exceeded" and "messages[2].content[0].image_url"); anything
# else is dropped as if not sent.
MAX_ERROR_FIELD_CHARS: Final = 128
_ERROR_FIELD: Final = r"[A-Za-z0-9_.:/\[\]-]{1,%d}" % MAX_ERROR_FIELD_CHARS
# An upstream's finish (stop) reason is recorded in transcripts and sent on the
# control protocol as it is: a word of these characters; anything else reads
# as "stop" (the OpenAI door sends its own few words regardless).
MAX_FINISH_REASON_CHARS: Final = 64
_FINISH_REASON: Final = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_FINISH_REASON_CHARS)
# Largest event (line or data buffer) accepted from an event stream: far above
# any chunk an LLM API sends, low enough that garbage cannot exhaust memory.
MAX_EVENT_CHARS: Final = 4 * 1024 * 1024
# Most data lines one event may have: each is a string object of its own (about
# 60 bytes for a short one), so lines of a few characters are bounded by number.
# An LLM API sends one per event; a pretty-printed JSON event, a few hundred.
MAX_EVENT_DATA_LINES: Final = 65_536
# Seconds the last bytes of a response (the chunked terminator) may lag its
# stream's end marker and the connection still be pooled; read in the background.
END_DRAIN_TIMEOUT: Final = 1.0
# Event data up to this many characters is decoded in one call (it cannot hold
# more values than safejson decodes at once); longer data in loop slices.
LARGE_EVENT_CHARS: Final = safejson.MAX_VALUES_AT_ONCE
# Secrets shorter than this are not searched for in messages: redacting "1"
# would mangle every message and protect nothing.
MIN_REDACTED_CHARS: Final = 4


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``: the token estimate of the local providers.

    Holds the event loop for the whole text (about 20 ms per MiB of one-letter
    words): use ``count_words`` for texts that may be large.
    """
    return len(text.split())


# count_words: characters split between two returns to the loop (about half a ms).
_WORD_SLICE_CHARS: Final = 64 * 1024


async def count_words(*texts: str) -> int:
    """``word_count`` of all ``texts`` together, returning to the event loop every 64 Ki characters.

    A 20 MiB prompt of one-letter words is ten million words: counting them
    takes a quarter of a second, which must not be one step of the loop.
    """
    total = 0
    chars = 0                       # counted since the loop last had a turn
    for text in texts:
        if len(text) <= _WORD_SLICE_CHARS:
            total += len(text.split())
            chars += len(text)
            if chars > _WORD_SLICE_CHARS:       # about half a millisecond of splitting
                await asyncio.sleep(0)
                chars = 0
            continue
        for start in range(0, len(text), _WORD_SLICE_CHARS):
            piece = text[start:start + _WORD_SLICE_CHARS]
            total += len(piece.split())
            if start and not piece[0].isspace() and not text[start - 1].isspace():
                total -= 1          # a word cut by the slice was counted in both
            await asyncio.sleep(0)
        chars = 0
    return total


class Provider(abc.ABC):
    """A source of replies, configured under ``models.providers.<name>``.

    ``api`` names the wire protocol; ``supported_options`` lists the
    ``GenerationOptions`` (from ``types.OPTION_NAMES``) it can honour, and
    ``accepts`` the kinds of input besides text (from ``types.INPUT_KINDS``:
    "image", "audio", "tool_calls") it can take, so that the runtime refuses
    the others with 400, by name, before a run starts.
    """

    api: ClassVar[str]
    supported_options: ClassVar[frozenset[str]]
    accepts: ClassVar[frozenset[str]] = INPUT_KINDS

    def __init__(self, name: str, config: ProviderConfig | None) -> None:
        self.name = name
        self.config = config
        # The runtime fails a run whose reply passes this many UTF-8 bytes.
        self.max_reply_bytes = config.max_reply_bytes if config is not None else DEFAULT_MAX_REPLY_BYTES

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} api={self.api!r}>"

    def check_model(self, model: str) -> None:
        """Accept ``model`` or raise ``ApiError`` 400 ``model_not_found``.

        A provider with a ``models`` list rejects names not in
        it; a provider without a list accepts any name.
        """
        models = self.config.models if self.config is not None else None
        if models is not None and model not in models:
            raise ApiError(400, f"model {model!r} is not offered by provider {self.name!r}",
                           code="model_not_found", param="model")

    @abc.abstractmethod
    def stream(self, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
        """The reply to ``call``: its output events, then one ``Usage`` if known, then one ``Finish``.

        An async generator. Raises ``UpstreamError`` (or a subclass) when the
        upstream fails; closing it (``aclose``) or cancelling its consumer
        releases every socket and process it holds before returning.
        """

    async def aclose(self) -> None:
        """Release what the provider keeps between calls (pooled connections)."""


# api → (module, class); imported on first use.
_APIS: Final[dict[str, tuple[str, str]]] = {
    "echo": ("echo", "EchoProvider"),
    "openai-completions": ("openai", "OpenAIProvider"),
    "anthropic-messages": ("anthropic", "AnthropicProvider"),
    "command": ("command", "CommandProvider"),
}


def create_provider(name: str, config: ProviderConfig | None) -> Provider:
    """The provider ``name`` configured by ``config`` (chosen by ``config.api``).

    ``name`` "echo" with no configuration is the built-in echo provider
    (the default model). Raises ``ConfigError`` for any other name without a
    configuration, an unknown ``api``, or a configuration the provider cannot use.
    """
    if config is None:
        if name != "echo":
            raise ConfigError(f"models.providers.{name}", "no such provider is configured")
        api = "echo"
    else:
        api = config.api
    if api not in _APIS:
        raise ConfigError(f"models.providers.{name}.api", f"unknown provider api {api!r}")
    module, cls = _APIS[api]
    provider_class = getattr(importlib.import_module(f".{module}", __name__), cls)
    return provider_class(name, config)


# -- event streams (WHATWG HTML §9.2.6 "Interpreting an event stream") ------------

class ServerSentEvent(NamedTuple):
    """One dispatched event: ``type`` ("message" unless an ``event:`` field named it), ``data``, ``id``."""

    type: str
    data: str
    id: str = ""


# "CRLF, a single LF not preceded by a CR, and a single CR not followed by a LF
# being the ways in which a line can end." Like the other patterns of this
# module, compiled by ``re`` on first use (and cached there), not at start-up.
_LINE_END: Final = r"\r\n|\r|\n"


class EventStreamDecoder:
    """Sans-I/O ``text/event-stream`` parser: ``feed(bytes)`` returns the events completed so far.

    Follows WHATWG HTML §9.2.6 line by line: UTF-8 decoded with replacement,
    one leading BOM ignored, comments (":" lines) skipped, ``data`` lines
    joined with LF, an event dispatched at each blank line. An event left
    unfinished at the end of the stream is discarded, as the spec says.
    ``pending_chars`` tells how much waits for a line end or a blank line,
    ``pending_data_lines`` in how many data lines.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # An incomplete line, as the pieces that brought it: joined once, when
        # its end comes (growing one string would copy it at every piece).
        self._line: list[str] = []
        self._line_chars = 0
        self._started = False       # past the place where a BOM may be
        self._after_cr = False      # the last line ended with a CR: skip one LF
        self._data: list[str] = []
        self._data_chars = 0
        self._type = ""
        self._last_id = ""

    @property
    def pending_chars(self) -> int:
        """Characters buffered in the incomplete line and the undispatched event."""
        return self._line_chars + self._data_chars

    @property
    def pending_data_lines(self) -> int:
        """``data`` lines of the undispatched event."""
        return len(self._data)

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Take the next bytes of the stream; return the events they complete."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if not self._started:
            self._started = True
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
            text = text.removeprefix("\ufeff")
        if self._after_cr:
            self._after_cr = False
            text = text.removeprefix("\n")
        if "\n" not in text and "\r" not in text:
            self._line.append(text)
            self._line_chars += len(text)
            return []
        if self._line:
            self._line.append(text)
            text = "".join(self._line)
        # Most streams end lines with LF only: str.split is C, the regex is not needed.
        lines = text.split("\n") if "\r" not in text else re.split(_LINE_END, text)
        rest = lines.pop()
        self._line = [rest] if rest else []
        self._line_chars = len(rest)
        # A CR at the very end may be the first half of a CRLF split across reads.
        self._after_cr = text.endswith("\r")
        events: list[ServerSentEvent] = []
        for line in lines:
            # The two lines of almost every event ("data: ..." and the blank
            # line) are handled here; _process has the general rules.
            if not line:
                self._dispatch(events)
            elif line.startswith("data:"):
                value = line[6:] if line[5:6] == " " else line[5:]
                self._data.append(value)
                self._data_chars += len(value) + 1
            else:
                self._process(line, events)
        return events

    def _process(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            # "If the line is empty (a blank line): Dispatch the event"
            self._dispatch(events)
        elif line[0] == ":":
            return      # "If the line starts with a U+003A COLON character (:): Ignore the line."
        else:
            name, colon, value = line.partition(":")
            # "If value starts with a U+0020 SPACE character, remove it from value."
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data.append(value)
                self._data_chars += len(value) + 1
            elif name == "event":
                self._type = value
            elif name == "id" and "\0" not in value:
                self._last_id = value
            # "retry" only matters to a reconnecting client; "Otherwise: The field is ignored."

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        # "If the data buffer is an empty string, set the data buffer and the
        # event type buffer to the empty string and return."
        if self._data:
            # The buffer is every value plus LF; "If the data buffer's last
            # character is a U+000A LINE FEED (LF) character, then remove the last character".
            events.append(ServerSentEvent(self._type or "message", "\n".join(self._data),
                                          self._last_id))
        self._data = []
        self._data_chars = 0
        self._type = ""


# -- the HTTP providers' common part -----------------------------------------------

# What net.client raises; mapped to UpstreamError at this boundary.
_CLIENT_ERRORS: Final = (ClientTimeout, ClientConnectError,
                         ConnectionClosed, HTTPProtocolError, OSError)
_CONTROL: Final = r"[\x00-\x1f\x7f-\x9f]+"
_RETRY_AFTER: Final = r"[0-9]{1,10}|[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9:]{8} GMT"


class HTTPProvider(Provider):
    """Base of the providers that POST JSON to an upstream and read an event stream back.

    Subclasses set ``default_base_url`` and ``path`` (joined as
    ``{baseUrl}/{path}``) and ``auth_headers()``. Each provider keeps its own
    pooled ``HTTPClient``; ``config.timeout`` bounds every phase (connect,
    write, silence between bytes, the whole response head). Raises ``ConfigError`` at construction for
    a missing configuration, a bad ``baseUrl`` or an unsafe header.
    """

    default_base_url: ClassVar[str]
    path: ClassVar[str]
    config: ProviderConfig

    def __init__(self, name: str, config: ProviderConfig | None) -> None:
        if config is None:
            raise ConfigError(f"models.providers.{name}", f"api {self.api!r} needs a configuration")
        super().__init__(name, config)
        # Imported by the first HTTP provider made (on first use), not to serve.
        from ..net import client as http_client
        base_url = config.base_url.rstrip("/") if config.base_url else self.default_base_url
        self.url = f"{base_url}/{self.path}"
        try:
            http_client.split_url(self.url)
        except ValueError as exc:
            raise ConfigError(f"models.providers.{name}.baseUrl", str(exc)) from None
        self._headers = self._merge_headers(name, config)
        self._secrets = tuple(s for s in (config.api_key, *(v for _, v in config.headers))
                              if s and len(s) >= MIN_REDACTED_CHARS)
        self._client = http_client.HTTPClient(connect_timeout=config.timeout,
                                              write_timeout=config.timeout,
                                              read_timeout=config.timeout)

    @abc.abstractmethod
    def auth_headers(self) -> list[tuple[str, str]]:
        """The protocol's own request headers (credentials, version, media types)."""

    def _merge_headers(self, name: str, config: ProviderConfig) -> list[tuple[str, str]]:
        # Configured headers win over the provider's defaults of the same name.
        own = {n.lower() for n, _ in config.headers}
        merged = [(n, v) for n, v in self.auth_headers() if n.lower() not in own]
        merged.extend(config.headers)
        for field_name, value in merged:
            if not _is_safe_field(field_name, value):
                # The value is never repeated: it may be a credential.
                raise ConfigError(f"models.providers.{name}.headers.{field_name}",
                                  "not a valid header field name or value")
        return merged

    async def aclose(self) -> None:
        """Close the pooled upstream connections."""
        await self._client.aclose()

    def redact(self, text: str) -> str:
        """``text`` with the API key and configured header values replaced by "***"."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def detail(self, text: str) -> str:
        """An upstream-provided text made fit for an error: redacted, one line, clipped."""
        # Redact first: clipping first could cut a secret and leave its prefix.
        text = re.sub(_CONTROL, " ", self.redact(text)).strip()
        if len(text) > MAX_DETAIL_CHARS:
            text = text[:MAX_DETAIL_CHARS] + "…"
        return text

    def upstream_error(self, exc: BaseException) -> UpstreamError:
        """The ``UpstreamError`` for a failure raised by ``net.client``."""
        if isinstance(exc, ClientTimeout):
            return UpstreamTimeout(self.name, exc.timeout, exc.phase)
        if isinstance(exc, ClientConnectError):
            return UpstreamError(self.name, f"cannot connect: {exc.reason}")
        if isinstance(exc, ConnectionClosed):
            return UpstreamError(self.name, "connection closed before the response was complete")
        if isinstance(exc, HTTPProtocolError):
            # The parser's reason may quote the upstream's bytes (a field value
            # it refused), which may repeat our own request's credentials.
            return UpstreamError(self.name, f"invalid HTTP response: {self.detail(exc.reason)}")
        return UpstreamError(self.name, f"connection failed: {type(exc).__name__}")

    async def open_stream(self, payload: dict[str, Any], call: ProviderCall) -> http_client.ClientResponse:
        """POST ``payload`` (built from ``call``) as JSON; the 2xx response, whose body the
        caller must ``aclose``.

        Raises ``UpstreamRejected`` for any other status (with the upstream's
        ``error.message``, ``error.code`` and ``error.param``, and ``Retry-After``),
        ``UpstreamTimeout`` or ``UpstreamError``.
        """
        # A call with much text (ten thousand messages, a 20 MiB one) is
        # encoded in slices of the event loop; the usual small one at once.
        chars = len(call.system)
        for message in call.messages:
            content = message.content
            chars += len(content) if type(content) is str else content_chars(content)
        text = compact_json.dumps(payload) if chars < compact_json.LARGE_CHARS \
            else await compact_json.dumps_async(payload)
        body = text.encode()
        try:
            # A completion request changes nothing upstream, so a pooled
            # connection found closed before any answer is replaced once
            # (RFC 9110 §9.2.2 lets a client that knows a request is safe repeat it).
            response = await self._client.request("POST", self.url, headers=self._headers,
                                                  body=body, idempotent=True)
        except _CLIENT_ERRORS as exc:
            raise self.upstream_error(exc) from exc
        if 200 <= response.status < 300:
            return response
        raise await self._rejection(response)

    async def _rejection(self, response: http_client.ClientResponse) -> UpstreamRejected:
        retry_after = response.headers.get("retry-after")
        if retry_after is not None and not re.fullmatch(_RETRY_AFTER, retry_after.strip()):
            retry_after = None
        try:
            body = await response.read(MAX_ERROR_BODY_BYTES)
        except _CLIENT_ERRORS:
            body = b""      # the status says enough
        finally:
            await response.aclose()
        document = _json_object(body)
        message = error_message(document) or _plain_text(response, body) or \
            f"{response.status} {response.reason}".strip()
        code, param = self.error_fields(document)
        return UpstreamRejected(self.name, response.status, self.detail(message),
                                retry_after=retry_after.strip() if retry_after else None,
                                code=code, param=param)

    def error_fields(self, document: dict[str, Any] | None) -> tuple[str | None, str | None]:
        """(``error.code``, ``error.param``) of an OpenAI error body, each None unless a
        string of at most ``MAX_ERROR_FIELD_CHARS`` safe characters that holds no secret."""
        error = document.get("error") if document is not None else None
        if not isinstance(error, dict):
            return None, None
        return self._error_field(error.get("code")), self._error_field(error.get("param"))

    def _error_field(self, value: Any) -> str | None:
        if type(value) is not str or not re.fullmatch(_ERROR_FIELD, value) or self.redact(value) != value:
            return None
        return value

    @staticmethod
    async def release(response: http_client.ClientResponse, *, ended: bool) -> None:
        """Give ``response`` back: pooled if the stream ``ended`` by its own marker, else closed now."""
        await response.aclose(drain_timeout=END_DRAIN_TIMEOUT if ended else 0.0)

    async def events(self, response: http_client.ClientResponse) -> AsyncIterator[ServerSentEvent]:
        """The events of an event-stream response body, until the body ends."""
        media_type = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
        if media_type and media_type != "text/event-stream":
            raise UpstreamError(self.name, f"expected an event stream, got {self.detail(media_type)!r}")
        decoder = EventStreamDecoder()
        try:
            async for chunk in response:
                for event in decoder.feed(chunk):
                    yield event
                if decoder.pending_chars > MAX_EVENT_CHARS:
                    raise UpstreamError(self.name, f"event stream event over {MAX_EVENT_CHARS} characters")
                if decoder.pending_data_lines > MAX_EVENT_DATA_LINES:
                    raise UpstreamError(self.name, f"event stream event over {MAX_EVENT_DATA_LINES} data lines")
        except _CLIENT_ERRORS as exc:
            raise self.upstream_error(exc) from exc

    def json_data(self, event: ServerSentEvent) -> dict[str, Any]:
        """The JSON object in an event's data; ``UpstreamError`` for anything else
        (nesting past ``safejson.MAX_DEPTH`` included). Holds the loop for the whole
        decode: for data longer than ``LARGE_EVENT_CHARS``, use ``json_data_async``."""
        try:
            value = safejson.loads(event.data)
        except ValueError:
            raise UpstreamError(self.name, "event stream data is not JSON") from None
        return self._object(value)

    async def json_data_async(self, event: ServerSentEvent) -> dict[str, Any]:
        """``json_data``, decoded in slices of the event loop (a few MiB of tiny values
        take a quarter of a second to decode)."""
        try:
            value = await safejson.loads_async(event.data)
        except ValueError:
            raise UpstreamError(self.name, "event stream data is not JSON") from None
        return self._object(value)

    def _object(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise UpstreamError(self.name, "event stream data is not a JSON object")
        return value


def _is_safe_field(name: str, value: str) -> bool:
    # RFC 9110 §5.1: field-name = token; §5.5: a value holds no CR, LF or NUL.
    # Values go on the wire as ISO-8859-1, so they must be encodable as such.
    if not name.isascii() or grammar.TOKEN.fullmatch(name.encode("ascii")) is None:
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return re.search(_CONTROL, value.replace("\t", " ")) is None


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object an error body holds, or None."""
    try:
        doc = safejson.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def error_message(doc: dict[str, Any] | None) -> str | None:
    """``error.message`` (or a bare ``error``/``message`` string) of a JSON error body's object, if any."""
    if doc is None:
        return None
    error = doc.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    message = doc.get("message")
    return message if isinstance(message, str) else None


def _plain_text(response: http_client.ClientResponse, body: bytes) -> str | None:
    content_type = (response.headers.get("content-type") or "").lower()
    if content_type.startswith("text/plain") and body:
        return body[:MAX_DETAIL_CHARS * 4].decode("utf-8", "replace")
    return None


def as_user_text(message: Message) -> str:
    """A tool result as plain user text: without tool-call ids, upstreams reject role "tool"."""
    return f"[tool result] {message.text()}"

