"""The HTTP/1.1 grammar in one place: RFC 9110 / RFC 9112 / RFC 3986 rules as compiled patterns.

Each pattern names the section it comes from. The codecs (``http11.py``) import
these and never spell a character class of their own. Patterns work on bytes,
since the wire is bytes; header values are decoded as ISO-8859-1 afterwards so
obs-text survives round trips.

The patterns a server needs for every request are compiled at import; those
of rarer paths (a bad field line to explain, a status line, a chunked body,
the absolute and authority forms) on first use, through the module's
``__getattr__``: re compiles in Python, a few hundred microseconds a pattern.
"""

from __future__ import annotations

import re
from typing import Final

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "."
#                          / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")

# RFC 9110 §5.5: field-vchar = VCHAR / obs-text; field-value = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
_FIELD_VCHAR = rb"\x21-\x7e\x80-\xff"

# RFC 9112 §5.1: field-line = field-name ":" OWS field-value OWS
#   "No whitespace is allowed between the field name and colon."
_FIELD_LINE = (
    rb"([" + _TCHAR + rb"]+):[ \t]*"
    rb"((?:[" + _FIELD_VCHAR + rb"](?:[ \t" + _FIELD_VCHAR + rb"]*[" + _FIELD_VCHAR + rb"])?)?)"
    rb"[ \t]*"
)

# The whole field section at once: *( field-line CRLF ), each line as above.
# Validating the block with one match and splitting it afterwards is several
# times cheaper than one match per line; the per-line pattern (FIELD_LINE) then
# only has to explain a failure.
FIELD_SECTION = re.compile(
    rb"(?:\r\n[" + _TCHAR + rb"]+:[ \t]*"
    rb"(?:[" + _FIELD_VCHAR + rb"](?:[ \t" + _FIELD_VCHAR + rb"]*[" + _FIELD_VCHAR + rb"])?)?"
    rb"[ \t]*)*"
)

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
#   RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT
#   The target is checked loosely here (visible ASCII, as every mainstream
#   parser does: quotes, "|" and "#" occur in real traffic) and by form below.
REQUEST_LINE = re.compile(
    rb"([" + _TCHAR + rb"]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])"
)

# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
#   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ). The SP before an empty
#   reason is required by the grammar but often missing in the wild: accepted.
_STATUS_LINE = rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?"

# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size = 1*HEXDIG
#   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-val = token / quoted-string
# BWS is allowed around ";" and "=" but not right after the size (llhttp
# strict and RFC 9112 agree: "a \r\n" is malformed).
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = (
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*[" + _TCHAR + rb"]+"
    rb"(?:[ \t]*=[ \t]*(?:[" + _TCHAR + rb"]+|" + _QUOTED_STRING + rb"))?)*)"
)

# RFC 9110 §8.6: Content-Length = 1*DIGIT
CONTENT_LENGTH = re.compile(rb"[0-9]+")

# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
#   uri-host = IP-literal / IPv4address / reg-name
#   reg-name = *( unreserved / pct-encoded / sub-delims )
HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*(?::[0-9]*)?"
)

# RFC 9112 §3.2.1-3.2.4: the four forms of request-target.
ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")
_ABSOLUTE_FORM = rb"[A-Za-z][A-Za-z0-9+\-.]*://[\x21-\x7e]*"
_AUTHORITY_FORM = rb"[A-Za-z0-9\-._~!$&'()*+,;=%\[\]:]+:[0-9]+"

# The patterns compiled on first use: their names, and the sources above.
_LATER: Final = {"FIELD_LINE": _FIELD_LINE, "STATUS_LINE": _STATUS_LINE, "CHUNK_LINE": _CHUNK_LINE,
                 "ABSOLUTE_FORM": _ABSOLUTE_FORM, "AUTHORITY_FORM": _AUTHORITY_FORM}
FIELD_LINE: re.Pattern[bytes]
STATUS_LINE: re.Pattern[bytes]
CHUNK_LINE: re.Pattern[bytes]
ABSOLUTE_FORM: re.Pattern[bytes]
AUTHORITY_FORM: re.Pattern[bytes]


def __getattr__(name: str) -> re.Pattern[bytes]:
    """A pattern of ``_LATER``, compiled once, then a plain module attribute (PEP 562)."""
    if name not in _LATER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    pattern = globals()[name] = re.compile(_LATER[name])
    return pattern

# Methods the gateway recognises: the IANA HTTP Method Registry
# (RFC 9110 §16.1) plus the extensions mainstream parsers accept.
# RFC 9110 §9.1: "An origin server that receives a request method that is
# unrecognized or not implemented SHOULD respond with the 501 status code."
KNOWN_METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "COPY", "LABEL", "LINK",
    "LOCK", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF",
    "MKWORKSPACE", "MOVE", "ORDERPATCH", "PROPFIND", "PROPPATCH", "QUERY", "REBIND",
    "REPORT", "SEARCH", "UNBIND", "UNCHECKOUT", "UNLINK", "UNLOCK", "UPDATE",
    "UPDATEREDIRECTREF", "VERSION-CONTROL",
    # Widely deployed extensions: SSDP, cache purging, Icecast, pub/sub.
    "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "SOURCE",
})


def split_list(value: str) -> list[str]:
    """Split an RFC 9110 §5.6.1 list (``#element``) into trimmed, non-empty members."""
    return [part.strip(" \t") for part in value.split(",") if part.strip(" \t")]
