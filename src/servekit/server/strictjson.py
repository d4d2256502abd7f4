"""Strict JSON parsing shared by every protocol (no web framework imports).

orjson is fast (5-15x stdlib json here) but keeps the last of duplicate keys silently;
``loads_strict`` refuses them, so a request never means something other than it says.
It also bounds the nesting depth (``MAX_DEPTH``) before anything is parsed, so no walk
over a request's structure (ours, numpy's, repr's) can recurse deeply.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from servekit.errors import BadInput
from servekit.tensors import MAX_RANK

# A tensor of MAX_RANK dimensions inside the deepest wrapper a protocol has (v1's
# {"instances": [{"input": ...}]}, V2's {"inputs": [{"data": ...}]}) and a little more.
MAX_DEPTH = MAX_RANK + 8

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class TooDeep(BadInput):
    """JSON nested deeper than ``MAX_DEPTH``."""


def check_depth(body: bytes | memoryview) -> None:
    """Refuse JSON nested deeper than ``MAX_DEPTH`` (brackets inside strings aside)."""
    raw = bytes(body)
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return  # too few brackets to nest that deep: the common, small request
    if b'"' in raw:
        raw = _JSON_STRING.sub(b'""', raw)
    steps = _OPEN[np.frombuffer(raw, dtype=np.uint8)]
    depth = int(np.cumsum(steps, dtype=np.int64).max(initial=0))
    if depth > MAX_DEPTH:
        raise TooDeep(
            f"JSON nested {depth} levels deep; at most {MAX_DEPTH} are accepted (tensors "
            f"of up to {MAX_RANK} dimensions)"
        )


def _keys_in(obj: Any) -> int:
    """Keys of every object in ``obj``. A list whose first leaf is not an object is
    taken as numeric data and not walked (an object hidden in it shows up as a count
    mismatch all the same). Iterative: the depth is bounded, but no recursion at all
    is simpler to trust."""
    count = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list) and item:
            first = item[0]
            while isinstance(first, list) and first:
                first = first[0]
            if isinstance(first, dict):
                stack.extend(item)
    return count


def _colons_outside_strings(body: bytes) -> int:
    strings: list[bytes] = _JSON_STRING.findall(body)
    return body.count(b":") - sum(s.count(b":") for s in strings)


def loads_strict(body: bytes | memoryview, what: str = "a JSON object") -> Any:
    """Parse a request body strictly: orjson, plus no duplicate keys and a bounded depth.

    orjson keeps the last of duplicate keys silently. Outside strings, JSON has a colon
    only after a key, so fewer keys parsed than such colons means a key was collapsed.
    This costs about 2 µs on small bodies and ~12% of the parse on a 3 MB one.
    """
    if not body:
        raise BadInput(f"empty request body; expected {what}")
    check_depth(body)
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
