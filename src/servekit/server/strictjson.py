"""Strict JSON parsing shared by every protocol (no web framework imports).

orjson is fast (5-15x stdlib json here) but keeps the last of duplicate keys silently;
``loads_strict`` refuses them, so a request never means something other than it says.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from servekit.errors import BadInput

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _keys_in(obj: Any) -> int:
    """Keys of every object in ``obj``. A list whose first leaf is not an object is
    taken as numeric data and not walked (an object hidden in it shows up as a count
    mismatch all the same)."""
    if isinstance(obj, dict):
        return len(obj) + sum(_keys_in(v) for v in obj.values())
    if isinstance(obj, list) and obj:
        first = obj[0]
        while isinstance(first, list) and first:
            first = first[0]
        if isinstance(first, dict):
            return sum(_keys_in(v) for v in obj)
    return 0


def _colons_outside_strings(body: bytes) -> int:
    strings: list[bytes] = _JSON_STRING.findall(body)
    return body.count(b":") - sum(s.count(b":") for s in strings)


def loads_strict(body: bytes | memoryview, what: str = "a JSON object") -> Any:
    """Parse a request body strictly: orjson, plus no duplicate keys.

    orjson keeps the last of duplicate keys silently. Outside strings, JSON has a colon
    only after a key, so fewer keys parsed than such colons means a key was collapsed.
    This costs about 2 µs on small bodies and ~12% of the parse on a 3 MB one.
    """
    if not body:
        raise BadInput(f"empty request body; expected {what}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadInput(f"malformed JSON: {e}") from None
    if _colons_outside_strings(bytes(body)) != _keys_in(data):
        raise BadInput(
            "duplicate keys in a JSON object (or objects inside numeric data); "
            "each key may appear once"
        )
    return data
