"""JSON5 reader: ``loads(text)`` turns one JSON5 document into Python values.

Owns the JSON5 1.0.0 grammar (https://spec.json5.org/) and nothing else: it
reads no files and knows no config schema; it imports only ``errors``.
Objects become dicts (source order; a repeated name keeps its first place and
its last value), arrays lists, integral literals ints, other numbers floats.
A document that is not JSON5 raises :class:`~equabot_gw.errors.JSON5Error`
with the wording, line and column of the reference implementation
(json5/json5 2.2.3), plus ``expected``: what the grammar wanted there, in
words a person fixing a config file can act on (``expected ',' or '}' after
the value of "a"``); no other exception escapes for any ``str`` input.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable

from equabot_gw.errors import JSON5Error

__all__ = ["MAX_DEPTH", "loads"]

# Arrays and objects open at once. A config file needs a handful; the limit
# spares every caller that walks the value recursively from RecursionError
# (Python's own limit is 1000 frames). The reference has no limit; the parser
# keeps its own stack, so max_depth=None lifts it safely.
MAX_DEPTH = 1000

# -- the lexical grammar -----------------------------------------------------

# JSON5 §8 White Space, Table 3: U+0009, U+000A, U+000B, U+000C, U+000D,
# U+0020, U+00A0, U+2028, U+2029, U+FEFF and "any other character in the
# Space Separator Unicode category". Zs is spelled out (these 17 characters
# since Unicode 6.3 moved U+180E out); a test checks it against unicodedata.
_WHITESPACE = re.compile(
    "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]*")

# JSON5 §7: "A single line comment ... ends with a LineTerminator or the end
# of the document" (ES5.1 §7.3: LF, CR, LS, PS).
_LINE_TERMINATOR = re.compile("[\n\r\u2028\u2029]")

# What stops the plain run of a string's characters: its quote, an escape, or
# a raw LF or CR. JSON5 §5.2: "JSON5 allows the Unicode code points U+2028
# and U+2029 to appear unescaped in strings".
_STRING_STOP = {'"': re.compile('["\\\\\n\r]'), "'": re.compile("['\\\\\n\r]")}
_LOW_SURROGATE_ESCAPE = re.compile(r"\\u[dD][c-fC-F][0-9A-Fa-f]{2}")

# Hex and decimal digits are ASCII only (ES5.1 §7.8.3); re's [0-9], not \d.
_HEX_DIGITS = re.compile("[0-9A-Fa-f]*")
_DECIMAL_DIGITS = re.compile("[0-9]*")
_DIGIT = frozenset("0123456789")
_NONZERO_DIGIT = frozenset("123456789")

# JSON5 §5.1 Table 1, less \0 (which needs a lookahead) and the quotes and
# backslash, which stand for themselves like any other character.
_SINGLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

# JSON5 §9.1: "JSON5Identifier :: IdentifierName" of ES5.1 §7.6. The ASCII part of
# IdentifierPart runs by regex; other characters go by their Unicode category.
# The reference uses the later ID_Start/ID_Continue properties instead; they
# differ on a dozen rare characters (e.g. U+00B7, U+2118, U+2E2F).
_IDENTIFIER_PART_RUN = re.compile("[A-Za-z0-9$_\u200c\u200d]+")
# "UnicodeLetter: any character in the Unicode categories Lu, Ll, Lt, Lm, Lo, or Nl"
_LETTER = frozenset(("Lu", "Ll", "Lt", "Lm", "Lo", "Nl"))
# "UnicodeCombiningMark (Mn, Mc), UnicodeDigit (Nd), UnicodeConnectorPunctuation (Pc)"
_PART_ONLY = frozenset(("Mn", "Mc", "Nd", "Pc"))

_NUMBER_START = frozenset("+-.0123456789IN")
_NEWLINE = "\n"


def _is_identifier_start(c: str) -> bool:
    # IdentifierStart :: UnicodeLetter | $ | _ | \ UnicodeEscapeSequence
    return c in ("$", "_") or unicodedata.category(c) in _LETTER


def _is_identifier_part(c: str) -> bool:
    # IdentifierPart :: IdentifierStart | UnicodeCombiningMark | UnicodeDigit
    #                 | UnicodeConnectorPunctuation | <ZWNJ> | <ZWJ>
    return (_is_identifier_start(c) or c in ("\u200c", "\u200d")
            or unicodedata.category(c) in _PART_ONLY)


# -- the public entry point --------------------------------------------------

def loads(text: str, *, max_depth: int | None = MAX_DEPTH, unique_names: bool = False) -> Any:
    """Parse ``text``, one whole JSON5 document, into Python values.

    Args:
        text: the document, already decoded (a leading BOM is whitespace).
        max_depth: the most arrays and objects open at once; None for no limit.
        unique_names: refuse an object that names a member twice (JSON5, as
            JSON, lets the last win; a config file wants to hear of it).

    Returns:
        dict (keys in source order, the last of repeated names wins), list,
        str, int (integral literals, hexadecimal ones too), float (fraction,
        exponent, Infinity, NaN, and -0 which only a float can hold), bool
        or None.

    Raises:
        JSON5Error: ``text`` is not JSON5, nests deeper than ``max_depth``, or
            (``unique_names``) repeats a member name: the error is at its second name.
            ``reason``, ``line`` and ``column`` are those of the reference
            implementation; ``pos`` is the index of the offending character
            in ``text`` (``len(text)`` at the end of input); ``expected``
            says what was expected there, or is None where ``reason`` says
            it all.
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"JSON5 text must be str, not {type(text).__name__}")
    return _Reader(text, max_depth, unique_names).document()


# -- the reader ----------------------------------------------------------------

class _Reader:
    """One pass over one document; ``pos`` is the next unread character."""

    def __init__(self, text: str, max_depth: int | None, unique_names: bool = False) -> None:
        self.text = text
        self.pos = 0
        self.max_depth = max_depth
        self.unique_names = unique_names
        # The member name last read in each open object (None in arrays), for
        # messages and for storing the member's value.
        self.names: list[str | None] = []

    # JSON5Text :: JSON5Value, with whitespace and comments around it
    def document(self) -> Any:
        value = self.value()
        self.skip_insignificant()
        if self.pos < len(self.text):
            raise self.invalid_char(self.pos, "expected the end of the document after its value")
        return value

    def value(self) -> Any:
        """JSON5Value. Open arrays and objects wait on an explicit stack, so
        nesting costs no recursion."""
        stack: list[list[Any] | dict[str, Any]] = []
        root = None
        while True:
            value = self.value_start()
            if not stack:
                root = value
            elif type(stack[-1]) is list:
                stack[-1].append(value)
            else:
                stack[-1][self.names[-1]] = value
            opened = type(value) is list or type(value) is dict
            if opened:
                if self.max_depth is not None and len(stack) >= self.max_depth:
                    raise self.error(f"arrays and objects nested deeper than the limit "
                                     f"of {self.max_depth}", self.pos - 1)
                stack.append(value)
                self.names.append(None)
            # Close every container that ends here; stop where another value is due.
            while stack and not self.member_follows(stack[-1], first=opened):
                stack.pop()
                self.names.pop()
                opened = False
            if not stack:
                return root

    def value_start(self) -> Any:
        """A whole primitive value, or a new empty list or dict for '[' or '{'."""
        self.skip_insignificant()
        c = self.text[self.pos:self.pos + 1]
        if c == "[" or c == "{":
            self.pos += 1
            return [] if c == "[" else {}
        if c == '"' or c == "'":
            return self.string()
        if c in _NUMBER_START:
            return self.number()
        if c == "n":
            return self.literal("null", None)
        if c == "t":
            return self.literal("true", True)
        if c == "f":
            return self.literal("false", False)
        raise self.invalid_char(self.pos, self.value_expected())

    def member_follows(self, container: list[Any] | dict[str, Any], first: bool) -> bool:
        """After '[' or '{' (``first``) or after a member's value: read the ','
        between members, then either the closing bracket (False) or, in an
        object, the next member's name and ':' (True: its value is due)."""
        closing = "]" if type(container) is list else "}"
        self.skip_insignificant()
        if not first:
            c = self.text[self.pos:self.pos + 1]
            if c != ",":
                if c != closing:
                    after = ("an array element" if closing == "]"
                             else f"the value of {_quote(self.names[-1] or '')}")
                    raise self.invalid_char(self.pos, f"expected ',' or '{closing}' after {after}")
                self.pos += 1
                return False
            self.pos += 1
            self.skip_insignificant()
        # JSON5 §3, §4: "A single comma may follow the name/value pair" / "the
        # final element"; none may come first.
        if self.text.startswith(closing, self.pos):
            self.pos += 1
            return False
        if closing == "}":
            start = self.pos
            name = self.names[-1] = self.member_name(first)
            if self.unique_names and name in container:
                raise self.error(f"duplicate member name {_quote(name)}", start,
                                 f"{_quote(name)} is given twice in this object; say it once")
            self.skip_insignificant()
            if not self.text.startswith(":", self.pos):
                raise self.invalid_char(self.pos, f"expected ':' after the member name {_quote(name)}")
            self.pos += 1
        return True

    def value_expected(self) -> str:
        """What a missing value was expected for, in words."""
        if not self.names:
            return "expected a value"
        if self.names[-1] is None:
            return "expected a value or ']'"
        return f"expected a value for {_quote(self.names[-1])}"

    # JSON5MemberName :: JSON5Identifier | JSON5String
    def member_name(self, first: bool) -> str:
        c = self.text[self.pos:self.pos + 1]
        if c == '"' or c == "'":
            return self.string()
        if c != "\\" and not (c and _is_identifier_start(c)):
            where = "after '{'" if first else "after ','"
            raise self.invalid_char(self.pos, f"expected a member name or '}}' {where}")
        return self.identifier_name()

    # -- white space and comments (JSON5 §7, §8) --------------------------------

    def skip_insignificant(self) -> None:
        """Skip WhiteSpace, LineTerminators and Comments."""
        text = self.text
        pos = self.pos
        while True:
            pos = _WHITESPACE.match(text, pos).end()
            if text.startswith("//", pos):
                # SingleLineComment :: // SingleLineCommentChars(opt)
                end = _LINE_TERMINATOR.search(text, pos + 2)
                pos = len(text) if end is None else end.end()
            elif text.startswith("/*", pos):
                # MultiLineComment :: /* MultiLineCommentChars(opt) */
                end = text.find("*/", pos + 2)
                if end < 0:
                    raise self.invalid_char(len(text), "expected '*/' to close the comment at "
                                                       + self.where(pos))
                pos = end + 2
            elif text.startswith("/", pos):
                raise self.invalid_char(pos + 1)      # a lone '/' begins no token
            else:
                break
        self.pos = pos

    # -- literals: JSON5Null, JSON5Boolean, Infinity, NaN ----------------------

    def literal(self, word: str, value: Any) -> Any:
        """``word`` at pos, failing at its first wrong character; returns ``value``."""
        start = self.pos
        if not self.text.startswith(word, start):
            for offset, expected in enumerate(word):
                if not self.text.startswith(expected, start + offset):
                    raise self.invalid_char(start + offset)
        self.pos = start + len(word)
        return value

    # -- JSON5Number (JSON5 §6, ES5.1 §7.8.3) ----------------------------------

    def number(self) -> int | float:
        """JSON5Number :: JSON5NumericLiteral | + JSON5NumericLiteral | - JSON5NumericLiteral"""
        text = self.text
        negative = text.startswith("-", self.pos)
        if text[self.pos] in "+-":
            self.pos += 1
        c = text[self.pos:self.pos + 1]
        if c == "N":
            return self.literal("NaN", float("nan"))  # "NaN ... optional plus or minus sign"
        if c == "I":
            magnitude: int | float = self.literal("Infinity", float("inf"))
        elif c == "0" and text[self.pos + 1:self.pos + 2] in ("x", "X"):
            magnitude = self.hex_integer()
        else:
            magnitude = self.decimal_literal()
        if not negative:
            return magnitude
        # "-0" is negative zero, which only a float holds (the reference gives -0 too).
        return -magnitude if magnitude else -0.0

    def hex_integer(self) -> int:
        # HexIntegerLiteral :: 0x HexDigit | 0X HexDigit | HexIntegerLiteral HexDigit
        start = self.pos + 2
        end = _HEX_DIGITS.match(self.text, start).end()
        if end == start:
            raise self.invalid_char(start)
        self.pos = end
        return int(self.text[start:end], 16)

    def decimal_literal(self) -> int | float:
        # DecimalLiteral :: DecimalIntegerLiteral . DecimalDigits(opt) ExponentPart(opt)
        #                 | . DecimalDigits ExponentPart(opt)
        #                 | DecimalIntegerLiteral ExponentPart(opt)
        # DecimalIntegerLiteral :: 0 | NonZeroDigit DecimalDigits(opt)
        text = self.text
        start = pos = self.pos
        c = text[pos:pos + 1]
        if c == "0":
            pos += 1        # "00" ends the literal after the first 0: no octal
        elif c in _NONZERO_DIGIT:
            pos = _DECIMAL_DIGITS.match(text, pos).end()
        elif c != ".":
            raise self.invalid_char(pos)
        integral_end = pos
        if text.startswith(".", pos):
            end = _DECIMAL_DIGITS.match(text, pos + 1).end()
            if integral_end == start and end == pos + 1:
                raise self.invalid_char(pos + 1)      # "." needs a digit on one side
            pos = end
        if text[pos:pos + 1] in ("e", "E"):
            # ExponentPart :: ExponentIndicator SignedInteger
            pos += 2 if text[pos + 1:pos + 2] in ("+", "-") else 1
            end = _DECIMAL_DIGITS.match(text, pos).end()
            if end == pos:
                raise self.invalid_char(pos)
            pos = end
        self.pos = pos
        if pos > integral_end:
            return float(text[start:pos])
        try:
            return int(text[start:pos])
        except ValueError:      # over sys.get_int_max_str_digits(), a CPython DoS guard
            raise self.error(f"integer literal of {pos - start} digits over "
                             f"Python's int conversion limit", start) from None

    # -- JSON5String (JSON5 §5, ES5.1 §7.8.4) ----------------------------------

    def string(self) -> str:
        """A '"' or "'" delimited string; escapes decoded, line continuations dropped."""
        text = self.text
        quote = text[self.pos]
        stop = _STRING_STOP[quote]
        start = self.pos
        pos = start + 1
        parts = []
        while True:
            found = stop.search(text, pos)
            if found is None:
                raise self.invalid_char(len(text), f"expected '{quote}' to close the string at "
                                                   + self.where(start))
            end = found.start()
            parts.append(text[pos:end])
            c = text[end]
            if c == quote:
                break
            if c != "\\":                             # raw LF or CR
                raise self.invalid_char(end, f"expected '{quote}' to close the string at "
                                             f"{self.where(start)} (a line break needs \\n)")
            self.pos = end + 1
            parts.append(self.escape())
            pos = self.pos
        self.pos = end + 1
        return "".join(parts)

    def escape(self) -> str:
        """The EscapeSequence or LineContinuation after a backslash."""
        text = self.text
        pos = self.pos
        c = text[pos:pos + 1]
        self.pos = pos + 1
        if c in _SINGLE_ESCAPES:
            return _SINGLE_ESCAPES[c]
        if c == "0":
            # JSON5 §5.1: "A decimal digit must not follow a reverse solidus
            # followed by a zero."
            if text[pos + 1:pos + 2] in _DIGIT:
                raise self.invalid_char(pos + 1)
            return "\0"
        if c == "x":
            return chr(self.hex_code(2))              # HexEscapeSequence :: x HexDigit HexDigit
        if c == "u":
            return self.unicode_escape()
        if c == "\r":
            # LineContinuation :: \ LineTerminatorSequence, and CR LF is one sequence
            if text.startswith("\n", self.pos):
                self.pos += 1
            return ""
        if c in ("\n", "\u2028", "\u2029"):
            return ""
        # "If any other character follows a reverse solidus, except for the
        # decimal digits 1 through 9, that character will be included in the
        # string, but the reverse solidus will not."
        if c == "" or c in _NONZERO_DIGIT:
            raise self.invalid_char(pos)
        return c

    def unicode_escape(self) -> str:
        # UnicodeEscapeSequence :: u HexDigit HexDigit HexDigit HexDigit
        code = self.hex_code(4)
        # ECMAScript strings are UTF-16, so "\uD83D\uDE00" spells one
        # character (as for Python's json); a lone surrogate stays lone.
        if 0xD800 <= code <= 0xDBFF:
            low = _LOW_SURROGATE_ESCAPE.match(self.text, self.pos)
            if low:
                self.pos = low.end()
                low_code = int(low.group()[2:], 16)
                return chr(0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00))
        return chr(code)

    def hex_code(self, count: int) -> int:
        """``count`` HexDigits at pos, as the number they spell."""
        start = self.pos
        end = _HEX_DIGITS.match(self.text, start, start + count).end()
        if end - start < count:
            raise self.invalid_char(end)
        self.pos = end
        return int(self.text[start:end], 16)

    # -- JSON5Identifier (JSON5 §9.1, ES5.1 §7.6 IdentifierName) ---------------

    def identifier_name(self) -> str:
        """IdentifierName :: IdentifierStart | IdentifierName IdentifierPart"""
        text = self.text
        c = text[self.pos:self.pos + 1]
        if c == "\\":
            parts = [self.identifier_escape(_is_identifier_start)]
        elif c and _is_identifier_start(c):
            parts = [c]
            self.pos += 1
        else:
            raise self.invalid_char(self.pos)
        while True:
            run = _IDENTIFIER_PART_RUN.match(text, self.pos)
            if run:
                parts.append(run.group())
                self.pos = run.end()
            c = text[self.pos:self.pos + 1]
            if c == "\\":
                parts.append(self.identifier_escape(_is_identifier_part))
            elif c > "\x7f" and _is_identifier_part(c):
                parts.append(c)
                self.pos += 1
            else:
                return "".join(parts)

    def identifier_escape(self, allowed: Callable[[str], bool]) -> str:
        # "\ UnicodeEscapeSequence": the character it spells must itself be
        # allowed where it stands (ES5.1 §7.6).
        backslash = self.pos
        if not self.text.startswith("u", backslash + 1):
            raise self.invalid_char(backslash + 1)
        self.pos = backslash + 2
        c = chr(self.hex_code(4))
        if not allowed(c):
            raise self.error("invalid identifier character", backslash)
        return c

    # -- errors --------------------------------------------------------------

    def invalid_char(self, pos: int, expected: str | None = None) -> JSON5Error:
        """The reference's error for the character at ``pos`` (or the end of input)."""
        if pos >= len(self.text):
            return self.error("invalid end of input", len(self.text), expected)
        return self.error(f"invalid character '{_format_char(self.text[pos])}'", pos, expected)

    def error(self, reason: str, pos: int, expected: str | None = None) -> JSON5Error:
        line, column = _line_column(self.text, pos)
        error = JSON5Error(reason, line, column, pos)
        error.expected = expected       # type: ignore[attr-defined]
        return error

    def where(self, pos: int) -> str:
        """``line:column`` of the character at ``pos``, as editors count them (1-based)."""
        line = self.text.count("\n", 0, pos) + 1
        return f"{line}:{pos - self.text.rfind(_NEWLINE, 0, pos)}"


def _quote(name: str) -> str:
    """A member name as a message shows it: JSON-quoted, cut if long."""
    shown = name if len(name) <= 40 else name[:37] + "..."
    return '"' + "".join(_CHAR_NAMES.get(c, c) if c != "'" else c for c in shown) + '"'


def _line_column(text: str, pos: int) -> tuple[int, int]:
    """Where the reference reports the character at ``pos``: where it stands
    after reading it. Only LF starts a line; columns count UTF-16 code units,
    as editors speaking LSP do. So a bad LF is at column 0 of the next line,
    and the end of input one column past the last character."""
    end = pos + 1
    line = text.count("\n", 0, end) + 1
    line_start = text.rfind("\n", 0, end) + 1
    column = len(text[line_start:end].encode("utf-16-le", "surrogatepass")) // 2
    if pos >= len(text):
        column += 1
    return line, column


# The reference's formatChar: quotes, backslash and control characters escaped
# as in a JavaScript string literal. Lone surrogates are escaped too (our
# addition), so that a message can always be printed.
_CHAR_NAMES = {
    "'": "\\'", '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
    "\r": "\\r", "\t": "\\t", "\v": "\\v", "\0": "\\0",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
}


def _format_char(c: str) -> str:
    if c in _CHAR_NAMES:
        return _CHAR_NAMES[c]
    if c < " ":
        return f"\\x{ord(c):02x}"
    if "\ud800" <= c <= "\udfff":
        return f"\\u{ord(c):04x}"
    return c
