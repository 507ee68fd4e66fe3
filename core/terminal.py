"""Text for a terminal: control and bidirectional-override characters escaped.

Anything printed can hold text the user did not write: layer names, a spec's ``name``, paths, the messages
of a ``report.json`` read back from disk.  Printed raw, an escape sequence (``ESC [2J``) clears the screen
or fakes a line, and a bidi override (U+202E) shows text in an order other than the bytes.  Every line
gradmon and core print passes through :func:`printable`: printable characters stay as they are, the others
become visible escapes (``\\x1b``, ``\\u202e``).

>>> printable("dense0\\x1b[2J")
'dense0\\\\x1b[2J'
>>> printable("ok\\u202eevil")
'ok\\\\u202eevil'
"""

from __future__ import annotations

import unicodedata

#: Unicode categories escaped: controls (C0, DEL, C1), format characters (bidi embeddings, overrides,
#: isolates and marks, zero-width characters, the BOM), line and paragraph separators, lone surrogates
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every control, bidi and invisible character escaped (``\\x1b``, ``\\u202e``).

    ``keep_newlines``: leave ``\\n`` as is (multi-line output such as a rendered table); each line is
    still escaped.  Tabs are escaped too: a terminal expands them to a column of its own choosing.
    """
    s = str(text)
    if s.isprintable():  # the common case, at C speed (Cc, Cf, Zl, Zp and Cs are never printable)
        return s
    if keep_newlines:
        return "\n".join(printable(line) for line in s.split("\n"))
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in s)
