"""Strict JSON parsing shared by every protocol (no web framework imports).

orjson is fast (5-15x stdlib json here) but keeps the last of duplicate keys silently;
``loads_strict`` refuses them, so a request never means something other than it says.
It also bounds the nesting depth (``MAX_DEPTH``) before anything is parsed, so no walk
over a request's structure (ours, numpy's, repr's) can recurse deeply.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
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


# -- numeric arrays straight to numpy ----------------------------------------------------

try:  # simdjson reads a numeric array into a buffer without a Python object per number
    import simdjson as _simdjson
except ImportError:  # pragma: no cover - a platform without its wheel: orjson alone
    _simdjson = None  # type: ignore[assignment]

# Bodies and arrays below these sizes go through orjson alone: its cost is then small,
# and every cut below costs a few microseconds.
TENSOR_MIN_BODY = 16 * 1024
TENSOR_MIN_ARRAY = 4 * 1024

# Bytes that a numeric array is made of, and the rest, told apart in one pass
# (bytes.translate) so that runs of them are found with bytes.find (a regular
# expression over a 3 MB body took 15-20 ms, longer than decoding it).
_IN_ARRAY = bytes(
    ord("x") if chr(c) in "[]0123456789eE+-., \t\r\n" else ord("o") for c in range(256)
)
# What numbers and whitespace are made of: deleted, they leave an array's skeleton.
_NUMBERS_AND_SPACES = b"0123456789eE+-. \t\r\n"
# The most bytes one scanning step reads while holding the GIL (about 1 ms).
CHUNK = 1 << 20
# What stands in for a cut-out array while orjson parses the rest: a string no body can
# hold unless it has a \u0000 escape (such a body is parsed by orjson alone).
_MARK = b"\\u0000servekit-tensor-"
_MARK_TEXT = _MARK.decode("unicode_escape")
_NUL = _MARK[:6]
# A parser is kept per thread for documents up to this size: a fresh one allocates its
# buffers anew, and touching them (page faults) cost more than the parse itself (15 ms
# instead of 7 for a 2.9 MB image). A kept parser holds about twice the largest
# document it has read; larger ones get a parser of their own.
KEEP_PARSER_BYTES = 4 << 20
_parsers = threading.local()


def _numbers(piece: bytes, fraction: bool) -> Any:
    """The numbers of ``piece``, a JSON array of numbers (nested arrays flattened), as
    float64 (``fraction``) or int64; None if it is anything else."""
    keep = len(piece) <= KEEP_PARSER_BYTES
    parser = getattr(_parsers, "parser", None) if keep else None
    if parser is None:
        parser = _simdjson.Parser()
        if keep:
            _parsers.parser = parser
    try:
        buffer = parser.parse(piece).as_buffer(  # type: ignore[union-attr]
            of_type="d" if fraction else "i"
        )
    except (ValueError, TypeError, RuntimeError, UnicodeDecodeError, AttributeError):
        return None  # not numbers (or out of range): orjson's to judge
    return np.frombuffer(buffer, dtype=np.float64 if fraction else np.int64)


def _skeleton(shape: list[int]) -> bytes:
    """The brackets and commas of a rectangular array of ``shape``, without its numbers."""
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for n in reversed(shape[:-1]):
        text = b"[" + (text + b",") * (n - 1) + text + b"]"
    return text


def _shape_of(skeleton: bytes) -> list[int] | None:
    """The shape a skeleton has if it is rectangular (checked by the caller against
    ``_skeleton(shape)``), read from its first element at each level: the first array of
    level k ends where ``rank - k`` brackets first close together."""
    rank = len(skeleton) - len(skeleton.lstrip(b"["))
    if not 0 < rank <= MAX_RANK:
        return None
    shape: list[int] = []
    inner = 0  # the skeleton length of one element of the level below (a number: 0)
    for level in range(rank - 1, -1, -1):
        close = skeleton.find(b"]" * (rank - level))
        if close < 0:
            return None
        length = close + (rank - level) - level  # of this level's first array
        count, rest = divmod(length - 1, inner + 1)
        if rest or count < 1:
            return None
        shape.insert(0, count)
        inner = length
    return shape


def _chunks(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """``data[start:end]`` in pieces of ``CHUNK`` bytes (one GIL hold each)."""
    for i in range(start, end, CHUNK):
        yield data[i : min(i + CHUNK, end)]


def numeric_array(raw: bytes, start: int = 0, end: int | None = None) -> Any:
    """``raw[start:end]``, a JSON array of numbers (nested, rectangular), as a float64
    array (int64 when no number has a fraction or exponent, as numpy reads the same
    values from lists), or None when it is anything else: ragged, empty, out of int64
    or double range, not JSON, deeper than ``MAX_RANK``. None sends it to orjson, whose
    result (and errors) it would have had anyway.

    simdjson parses the array whole (so its syntax is JSON's) and flattens it; the
    shape comes from its skeleton, the brackets and commas left once numbers and
    whitespace are deleted, which must be that of a rectangular array of that shape
    with every place holding a number. The GIL is held for one parse of the array: a
    few ms per MiB, 35-65 ms at the 16 MiB JSON limit, where orjson would hold it for
    about 100 ms.
    """
    end = len(raw) if end is None else end
    if _simdjson is None:
        return None
    fraction = any(raw.find(c, start, end) >= 0 for c in (b".", b"e", b"E"))
    values = _numbers(raw[start:end], fraction)
    if values is None or not values.size:
        return None  # not numbers, or '[]' (no dtype to give): orjson's to read
    if raw.find(b"[", start + 1, end) < 0:
        return values  # one dimension: nothing more to check
    skeleton = b"".join(c.translate(None, _NUMBERS_AND_SPACES) for c in _chunks(raw, start, end))
    shape = _shape_of(skeleton)
    # An empty innermost array has a number's skeleton ('[]'): the count tells them apart.
    if shape is None or math.prod(shape) != values.size or skeleton != _skeleton(shape):
        return None
    return values.reshape(shape)


def loads_tensors(body: bytes | memoryview, what: str = "a JSON object") -> Any:
    """``loads_strict``, with each large numeric array of the body read straight into a
    numpy array (float64, or int64 for integers) in place of nested lists: the same
    values numpy would make of orjson's lists, without 150k Python floats for an image.
    Anything that is not such an array (strings, booleans, nulls, ragged or empty
    arrays, numbers out of range) is parsed by orjson, with the same errors."""
    raw = bytes(body)
    if _simdjson is None or len(raw) < TENSOR_MIN_BODY or _has_nul(raw):
        return loads_strict(raw, what)
    parts: list[bytes] = []
    arrays: dict[str, Any] = {}
    start = 0
    for first, end in _array_runs(raw):
        if not raw[:first].strip():
            continue  # the whole document: not a request object, orjson's to report
        arr = numeric_array(raw, first, end)
        if arr is None:
            continue
        key = str(len(arrays))
        arrays[_MARK_TEXT + key] = arr
        parts += [raw[start:first], b'"', _MARK, key.encode(), b'"']
        start = end
    if not arrays:
        return loads_strict(raw, what)
    parts.append(raw[start:])
    try:
        data = loads_strict(b"".join(parts), what)
    except BadInput:
        # A run cut from inside a string breaks the document (a marker's backslash
        # lands outside any string): orjson on the body as sent says what is wrong.
        return loads_strict(raw, what)
    if not isinstance(data, dict | list) or _put_back(data, arrays) > MAX_DEPTH:
        # A marker that was no value (an array where a key belongs), or an array whose
        # dimensions nest the body too deep (the depth check saw a marker, not them):
        # the body as sent gets the error loads_strict gives it.
        return loads_strict(raw, what)
    return data


def _has_nul(raw: bytes) -> bool:
    """Whether ``raw`` has a \\u0000 escape (the only way JSON writes the character
    every marker starts with), chunk by chunk."""
    if b"\\" not in raw:
        return False  # no escape at all: the common case, one memchr
    step = CHUNK + len(_NUL)
    return any(raw.find(_NUL, i, i + step) >= 0 for i in range(0, len(raw), CHUNK))


def _array_runs(raw: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each stretch of ``raw`` that may be one numeric array of at least
    ``TENSOR_MIN_ARRAY`` bytes: from its first '[' to its last ']'. A stretch that is
    not one array (two arrays side by side, a run inside a string) is refused later."""
    for begin, end in _long_runs(raw):
        first, last = raw.find(b"[", begin, end), raw.rfind(b"]", begin, end) + 1
        # A value comes after ':', ',' or '[': a run after anything else (a quote) is
        # inside a string.
        before = raw[begin:first].rstrip()[-1:] or raw[begin - 1 : begin]
        if 0 <= first < last and before in (b":", b",", b"["):
            yield first, last


def _long_runs(raw: bytes) -> Iterator[tuple[int, int]]:
    """(begin, end) of each longest stretch of bytes that numeric arrays are made of,
    ``TENSOR_MIN_ARRAY`` or more. One chunk is translated at a time (a stretch may go on
    into the next): a buffer the size of the body would be fresh memory on every request."""
    seed = b"x" * TENSOR_MIN_ARRAY
    begin = -1  # of a stretch that reached the end of the previous chunk
    for offset in range(0, len(raw), CHUNK):
        kinds = raw[offset : offset + CHUNK].translate(_IN_ARRAY)
        pos = 0
        if begin >= 0:
            pos = kinds.find(b"o")
            if pos < 0:
                continue
            if offset + pos - begin >= TENSOR_MIN_ARRAY:
                yield begin, offset + pos
            begin = -1
        while (hit := kinds.find(seed, pos)) >= 0:
            start, end = kinds.rfind(b"o", pos, hit) + 1, kinds.find(b"o", hit)
            if end < 0:
                begin = offset + start
                break
            yield offset + start, offset + end
            pos = end
        else:
            if not kinds.endswith(b"o"):
                begin = offset + kinds.rfind(b"o") + 1
    if begin >= 0 and len(raw) - begin >= TENSOR_MIN_ARRAY:
        yield begin, len(raw)


def _put_back(data: dict[str, Any] | list[Any], arrays: dict[str, Any]) -> int:
    """Replace each marker string in ``data`` by its array (the markers are left in
    document order, in objects and lists at any depth). Returns how deep the arrays
    nest the document (their containers and their own dimensions, counted as
    ``check_depth`` counts brackets), or more than ``MAX_DEPTH`` if a marker was not
    found as a value."""
    left = len(arrays)
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while stack and left:
        node, depth = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, str):
                if v in arrays:
                    node[k] = arr = arrays[v]  # type: ignore[index]
                    deepest = max(deepest, depth + arr.ndim)
                    left -= 1
            elif isinstance(v, dict | list):
                stack.append((v, depth + 1))
    return MAX_DEPTH + 1 if left else deepest
