"""YAML out: the documents we write (results, descriptions), fast where they are plain.

PyYAML's C emitter still builds and resolves every node in Python: about 0.18 ms for
one small result document, a tenth of what the submitter spends on a whole job. Most
documents we write are mappings of short single-line strings, numbers and flags,
which need none of that; :func:`emit` writes those itself, in the block style PyYAML
gives them, and hands anything else to PyYAML (the ``fallback`` it is given): a
multi-line string (stdout and stderr as literal blocks), an empty or nested list, a
key that is not a plain word, a number in exponent notation. Whatever it writes reads back
as the same document with any YAML loader (tests/unit/test_yamlout.py checks that
against PyYAML for generated documents and byte for byte for the usual shapes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

# a plain scalar that no YAML 1.1 resolver reads as anything but a string: it starts
# with a letter, "/" or "_" (numbers, dates, "~", "-", "<<" and "=" start otherwise),
# holds no indicator (":", "#", quotes, brackets, "!", "&", "*", "|", ">", "%", "@"
# at the start) and no space at either end
_PLAIN = re.compile(r"[A-Za-z_/](?:[A-Za-z0-9_./+ -]*[A-Za-z0-9_./+-])?\Z")
# the words YAML 1.1 reads as booleans or null (PyYAML's resolver, case as it has them)
_WORDS = frozenset(
    w for word in ("yes", "no", "true", "false", "on", "off", "null", "y", "n")
    for w in (word, word.capitalize(), word.upper()))
# a single-quoted scalar may hold any printable character of the Basic Multilingual Plane
# but a line break (YAML 1.1 counts U+0085, U+2028 and U+2029 as ones)
_QUOTABLE = re.compile("[\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]*\\Z")
MAX_KEY = 128  # longer keys need YAML's explicit "? " form: PyYAML's


class NotPlain(Exception):
    """A value :func:`emit` leaves to PyYAML."""


def emit(doc: dict[str, Any], fallback: Callable[[Any], str]) -> str:
    """``doc`` as block YAML; ``fallback(doc)`` (PyYAML) where it is not plain."""
    if not doc:
        return fallback(doc)
    try:
        lines: list[str] = []
        _mapping(doc, "", lines)
    except NotPlain:
        return fallback(doc)
    lines.append("")
    return "\n".join(lines)


def _mapping(doc: dict[str, Any], indent: str, lines: list[str]) -> None:
    for key, value in doc.items():
        if not isinstance(key, str) or len(key) > MAX_KEY or not _plain(key):
            raise NotPlain(key)
        head = indent + key + ":"
        if isinstance(value, dict):
            if not value:
                raise NotPlain(key)
            lines.append(head)
            _mapping(value, indent + "  ", lines)
        elif isinstance(value, list):
            if not value:
                raise NotPlain(key)
            lines.append(head)
            lines.extend(indent + "- " + _scalar(item) for item in value)
        else:
            lines.append(head + " " + _scalar(value))


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if not math.isfinite(value) or "e" in text:
            raise NotPlain(text)  # PyYAML writes these its own way (.inf, 1.0e+20)
        return text
    if isinstance(value, str):
        if _plain(value):
            return value
        if _QUOTABLE.match(value):
            return "'" + value.replace("'", "''") + "'"
    raise NotPlain(type(value).__name__)


def _plain(text: str) -> bool:
    return bool(_PLAIN.match(text)) and text not in _WORDS
