"""strictjson.loads_tensors: large numeric arrays straight into numpy, with the same
result (values and dtype, as numpy makes of orjson's lists) and the same errors as
loads_strict, and no Python object per number."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from servekit.errors import BadInput
from servekit.server import strictjson
from servekit.server.strictjson import loads_strict, loads_tensors

RNG = np.random.default_rng(7)


def same(fast: Any, slow: Any) -> None:
    """``fast`` (loads_tensors) holds what ``slow`` (loads_strict) does, arrays for lists."""
    if isinstance(fast, np.ndarray):
        want = np.asarray(slow)
        assert fast.dtype == want.dtype and fast.shape == want.shape
        assert np.array_equal(fast, want, equal_nan=True)
    elif isinstance(fast, dict):
        assert isinstance(slow, dict) and list(fast) == list(slow)
        for k in fast:
            same(fast[k], slow[k])
    elif isinstance(fast, list):
        assert isinstance(slow, list) and len(fast) == len(slow)
        for a, b in zip(fast, slow, strict=True):
            same(a, b)
    else:
        assert type(fast) is type(slow) and fast == slow


def arrays_in(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return 1
    if isinstance(value, dict):
        return sum(arrays_in(v) for v in value.values())
    if isinstance(value, list):
        return sum(arrays_in(v) for v in value)
    return 0


IMAGE = RNG.random((1, 40, 40, 3), dtype=np.float32)
INTS = RNG.integers(-1000, 1000, size=(64, 64))
BIG = [1.5] * 5000

BODIES: dict[str, tuple[bytes, int]] = {  # body, arrays read straight into numpy
    "v1-image-float32": (orjson.dumps({"instances": IMAGE.tolist()}), 1),
    "v1-ints": (orjson.dumps({"instances": INTS.tolist()}), 1),
    "v1-columnar": (orjson.dumps({"inputs": {"a": INTS.tolist(), "b": IMAGE.tolist()}}), 2),
    "v1-row-objects": (
        orjson.dumps({"instances": [{"a": BIG, "b": "x"}, {"a": BIG, "b": "y"}]}),
        2,
    ),
    "v2-data": (
        orjson.dumps({"id": "r[1]", "inputs": [{"name": "x", "shape": [1, 5000], "data": BIG}]}),
        1,
    ),
    "pretty-printed": (json.dumps({"instances": INTS.tolist()}, indent=2).encode(), 1),
    "exponents-and-signs": (
        ('{"instances": [' + ", ".join(["-0.0", "1e-5", "-2E+3", "3.25e2"] * 1500) + "]}").encode(),
        1,
    ),
    "ints-and-floats": (orjson.dumps({"instances": [1, 2.5] * 3000}), 1),
    "int64-limits": (orjson.dumps({"instances": [2**63 - 1, -(2**63)] * 1500}), 1),
    "uint64-max-stays-a-list": (orjson.dumps({"instances": [2**64 - 1] * 2000}), 0),
    "ragged-stays-a-list": (orjson.dumps({"instances": [BIG, BIG[:-1]]}), 0),
    "ragged-same-count": (orjson.dumps({"instances": [[1, 2], [3, 4, 5], [6]] * 1000}), 0),
    "mixed-nesting": (orjson.dumps({"instances": [1, [2, 3]] * 1000}), 0),
    "booleans-stay-a-list": (orjson.dumps({"instances": [True, False] * 3000}), 0),
    "nulls-stay-a-list": (orjson.dumps({"instances": [1, None] * 3000}), 0),
    "empty-rows-stay-a-list": (orjson.dumps({"instances": [[]] * 5000}), 0),
    "array-inside-a-string": (orjson.dumps({"s": json.dumps(BIG), "n": BIG}), 1),
    "array-after-escaped-quote": (
        ('{"s": "a\\"' + json.dumps(BIG) + '", "n": ' + json.dumps(BIG) + "}").encode(),
        1,
    ),
    "two-arrays-in-one-run": (
        ('{"x": ["s", ' + json.dumps(BIG) + ", " + json.dumps(BIG) + "]}").encode(),
        0,
    ),
    "rank-16": (orjson.dumps({"instances": np.zeros([1] * 15 + [5000]).tolist()}), 1),
    "rank-17-stays-a-list": (orjson.dumps({"x": np.zeros([1] * 16 + [5000]).tolist()}), 0),
    "small-body": (orjson.dumps({"instances": [[1.0] * 64]}), 0),
    "a-bare-array-stays-a-list": (orjson.dumps(BIG), 0),
    "several-chunks-floats": (
        orjson.dumps(
            {"instances": RNG.random((2, 150, 150, 3))}, option=orjson.OPT_SERIALIZE_NUMPY
        ),
        1,
    ),
    "several-chunks-ints": (
        orjson.dumps({"x": RNG.integers(-(2**62), 2**62, 300_000).tolist()}),
        1,
    ),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_same_result_as_orjson_and_numpy(case: str) -> None:
    body, expected_arrays = BODIES[case]
    fast = loads_tensors(body)
    same(fast, loads_strict(body))
    assert arrays_in(fast) == expected_arrays


ERRORS: dict[str, bytes] = {
    "duplicate-key-beside-an-array": b'{"a": [' + b"1," * 5000 + b'1], "a": 2}',
    "duplicate-key-after-an-array": b'{"a": [' + b"1," * 5000 + b'1], "b": {"c": 1, "c": 2}}',
    "bad-number": b'{"a": [' + b"01," * 5000 + b"1]}",
    "trailing-comma": b'{"a": [' + b"1," * 5000 + b"]}",
    "unclosed": b'{"a": [' + b"1," * 5000 + b"1",
    "bom": b"\xef\xbb\xbf" + b'{"a": [' + b"1," * 5000 + b"1]}",
    "invalid-escape-before-array": b'{"a": "q\\[' + b"1," * 5000 + b'1]", "b": 1}',
    "too-large-a-number": b'{"a": [' + b"1e999," * 5000 + b"1]}",
    "too-deep": b'{"a": ' + b"[" * 30 + b"1," * 5000 + b"1" + b"]" * 30 + b"}",
    "not-utf8": b'{"a": [' + b"1," * 5000 + b'1], "b": "\xff"}',
    "two-documents": b'{"a": [' + b"1," * 5000 + b"1]} {}",
    # The depth check runs on the body with its arrays cut out: an array's own
    # dimensions must still count (25 levels: 9 objects and 16 dimensions).
    "deep-around-a-cut-out-array": (
        b'{"a":' * 9 + b"[" * 16 + b"1," * 9000 + b"1" + b"]" * 16 + b"}" * 9
    ),
    # An array where a key belongs: its marker would have parsed as that key.
    "array-as-a-key": b'{"a": 1, [' + b"1," * 9000 + b"1]: 2}",
    "bad-key-beside-a-cut-out-array": b'{"a": [' + b"1," * 9000 + b'1], "b": {[2]: 3}}',
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_same_errors_as_loads_strict(case: str) -> None:
    body = ERRORS[case]
    with pytest.raises(BadInput) as slow:
        loads_strict(body)
    with pytest.raises(BadInput) as fast:
        loads_tensors(body)
    assert str(fast.value) == str(slow.value)


def test_a_marker_in_the_body_is_parsed_by_orjson_alone() -> None:
    body = orjson.dumps({"x": "\u0000servekit-tensor-0", "y": BIG})
    fast = loads_tensors(body)
    assert fast["x"] == "\u0000servekit-tensor-0" and isinstance(fast["y"], list)


def test_a_marker_written_with_other_escapes_is_parsed_by_orjson_alone() -> None:
    body = b'{"x": "\\u0000\\u0073ervekit-tensor-0", "y": ' + orjson.dumps(BIG) + b"}"
    fast = loads_tensors(body)
    assert fast["x"] == "\u0000servekit-tensor-0" and isinstance(fast["y"], list)


def test_without_simdjson_orjson_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strictjson, "_simdjson", None)
    body = BODIES["v1-image-float32"][0]
    result = loads_tensors(body)
    assert isinstance(result["instances"], list)
    same(loads_strict(body), result)


def test_no_python_object_per_number() -> None:
    image = RNG.random((1, 224, 224, 3), dtype=np.float32)
    body = orjson.dumps({"instances": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    loads_tensors(body)  # warm up
    before = sys.getallocatedblocks()
    result = loads_tensors(body)
    grew = sys.getallocatedblocks() - before
    assert result["instances"].shape == (1, 224, 224, 3)
    assert grew < 1000, f"{grew} Python blocks for 150,528 numbers"
    before = sys.getallocatedblocks()
    lists = loads_strict(body)
    assert sys.getallocatedblocks() - before > 150_000  # what it replaces
    del lists


@pytest.mark.parametrize(
    "text",
    [
        *(b"[[]3]", b"[[]6.1\t]", b"[53[,]964]", b"[[ 3,]93]", b"[1 2]", b"[[1],[]]", b"[[]]"),
        # One-dimensional arrays take a path of their own (one parse, no skeleton).
        *(b"[1,]", b"[]", b"[,1]", b"[1,,2]", b"[01]", b"[1.]", b"[-]", b"[1e]"),
        *(b"[9223372036854775808, 1]", b"[1e309, 1.0]", b"[1] [2]", b"[1, true]"),
        # Nested: what the skeleton alone would not tell, simdjson's parse does.
        *(b"[[1,true]]", b"[[1],[null]]", b'[["1"],[2]]', b"[[],[]]", b"[[1,2][3,4]]"),
        *(b"[[1,2],,[3,4]]", b"[[1,2],[3,4]]]", b"[[1,2],[3,{}]]", b"[[1,2],[3 4]]"),
    ],
)
def test_numeric_array_refuses_what_is_not_json(text: bytes) -> None:
    assert strictjson.numeric_array(text) is None


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_numeric_array_agrees_with_orjson_on_random_text(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random strings of the characters numeric arrays are made of, and random nested
    lists, with tiny chunks so that every step meets chunk boundaries: an array comes
    back only for valid JSON, and then exactly as numpy reads orjson's lists."""
    import random

    monkeypatch.setattr(strictjson, "CHUNK", chunk)
    rng = random.Random(chunk)
    texts = []
    for _ in range(4000):
        text = bytes(rng.choice(b"[],0123456789eE+-. \t") for _ in range(rng.randint(1, 40)))
        texts.append(b"[" + text + b"]" if rng.random() < 0.5 else text)
    for _ in range(1500):
        rows, cols = rng.randint(1, 4), rng.randint(1, 5)
        value = [
            [rng.choice([rng.randint(-999, 999), rng.uniform(-1e9, 1e9)]) for _ in range(cols)]
            for _ in range(rows)
        ]
        if rng.random() < 0.3:
            value[-1] = value[-1][:-1]  # ragged
        texts.append(orjson.dumps(value).replace(b",", b" , "))
        texts.append(orjson.dumps(value[0]))  # one-dimensional
    for text in texts:
        got = strictjson.numeric_array(text)
        if got is None:
            continue
        want = np.asarray(orjson.loads(text))  # raises if the text was not JSON
        assert got.dtype == want.dtype and got.shape == want.shape, text
        assert np.array_equal(got, want), text


@pytest.mark.parametrize("chunk", [1, 5, 16, 1 << 20])
def test_long_runs_are_found_across_chunks(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stretches of array bytes found chunk by chunk are exactly those a regular
    expression finds in the whole text, wherever the chunk boundaries fall."""
    import random
    import re

    monkeypatch.setattr(strictjson, "CHUNK", chunk)
    monkeypatch.setattr(strictjson, "TENSOR_MIN_ARRAY", 6)
    rng = random.Random(chunk)
    for _ in range(3000):
        text = bytes(rng.choice(b'1,[]"a:{') for _ in range(rng.randint(0, 60)))
        want = [m.span() for m in re.finditer(rb"[\[\]1,]{6,}", text)]
        assert list(strictjson._long_runs(text)) == want, text


def test_decoder_threads_keep_their_own_parser() -> None:
    """Bodies decoded in several threads at once, large and small, good and bad,
    each come back as orjson reads them (a parser is kept per thread)."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [body for body, _ in BODIES.values()]
    huge = orjson.dumps({"x": RNG.random(strictjson.KEEP_PARSER_BYTES // 10).tolist()})
    assert len(huge) > strictjson.KEEP_PARSER_BYTES
    bodies += [huge, b'{"x": [' + b"1," * 5000 + b"x]}"]

    def decode(body: bytes) -> Any:
        try:
            return loads_tensors(body)
        except BadInput as e:
            return e

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(decode, bodies * 4))
    for body, got in zip(bodies * 4, results, strict=True):
        try:
            want = loads_strict(body)
        except BadInput as e:
            assert isinstance(got, BadInput) and str(got) == str(e)
        else:
            same(got, want)


def test_arrays_as_deep_as_allowed_are_read() -> None:
    """24 levels (8 objects around 16 dimensions) is the deepest accepted."""
    body = b'{"a":' * 8 + b"[" * 16 + b"1," * 9000 + b"1" + b"]" * 16 + b"}" * 8
    result = loads_tensors(body)
    for _ in range(7):
        result = result["a"]
    assert result["a"].shape == (1,) * 15 + (9001,)


def _random_document(rng: Any) -> bytes:
    """A random body: objects, lists, strings that look like arrays, and numeric arrays
    of rank 1-18 (some ragged, empty, holding non-numbers), wrapped up to 12 deep, and
    sometimes a few bytes changed; or an array where a key belongs, or one at the depth
    limit."""
    numbers = [b"0", b"-0", b"-0.0", b"1e5", b"1E-0", b"2.5", b"-7", b"9223372036854775807"]
    numbers += [b"-9223372036854775808", b"4.9e-324", b"1.7976931348623157e308"]
    odd = [b"true", b"null", b'"1"', b"[]", b"{}", b"[1]", b"1 2", b"", b"01", b"1."]
    odd += [b"9223372036854775808", b"18446744073709551616", b"1e400"]
    strings = [b'"x"', b'"[1,2,3]"', b'"a\\"[1,2]"', b'"\\u005b1]"', b'": [1]"', b'"\\u0000"']

    def array(shape: list[int]) -> bytes:
        if len(shape) == 1:
            items = [rng.choice(numbers) for _ in range(shape[0])]
        elif len(shape) == 2 and shape[0] > 1 and rng.random() < 0.1:
            # Ragged with a rectangle's count: rows cut from the numbers at random.
            flat = [rng.choice(numbers) for _ in range(shape[0] * shape[1])]
            cuts = sorted(rng.sample(range(1, len(flat)), min(shape[0] - 1, len(flat) - 1)))
            rows = [flat[a:b] for a, b in zip([0, *cuts], [*cuts, len(flat)], strict=True)]
            items = [b"[" + b",".join(row) + b"]" for row in rows]
        else:
            items = [array(shape[1:]) for _ in range(shape[0])]
        if rng.random() < 0.03:
            items[rng.randrange(len(items))] = rng.choice(odd)
        if rng.random() < 0.02:
            items.pop() if rng.random() < 0.5 else items.append(items[0])
        space = rng.choice([b"", b"", b" ", b"\n "])
        return b"[" + (b"," + space).join(items) + b"]"

    def value(depth: int) -> bytes:
        r = rng.random()
        if depth > 3 or r < 0.5:
            rank = rng.choice([1, 1, 2, 3, rng.randint(1, 18)])
            outer = [rng.randint(1, 3) if i < 2 else 1 for i in range(rank - 1)]
            return array([*outer, rng.randint(1, 30)])
        if r < 0.55:
            return rng.choice(strings + odd[:2])
        if r < 0.8:
            keys = rng.sample([b'"a"', b'"b"', b'"x[1]"', b'"d:e"'], rng.randint(0, 3))
            if rng.random() < 0.1 and keys:
                keys.append(keys[0])  # a duplicate key
            return b"{" + b",".join(k + b":" + value(depth + 1) for k in keys) + b"}"
        return b"[" + b",".join(value(depth + 1) for _ in range(rng.randint(1, 3))) + b"]"

    r = rng.random()
    if r < 0.04:  # an array where a key belongs
        return b'{"a": 1, ' + array([rng.randint(1, 30)]) + b": 2}"
    if r < 0.08:  # an array at the depth limit, or one level past it
        rank = rng.randint(1, 16)
        wrap = strictjson.MAX_DEPTH - rank + rng.choice([0, 1])
        return b'{"a":' * wrap + array([1] * (rank - 1) + [rng.randint(1, 30)]) + b"}" * wrap
    wrap = rng.choice([0, 0, 1, 2, rng.randint(0, 12)])
    body = b'{"a":' * wrap + value(0) + b"}" * wrap
    if rng.random() < 0.15:
        raw = bytearray(body)
        i = rng.randrange(len(raw))
        raw[i : i + rng.randint(0, 2)] = bytes([rng.choice(b'[]{},:"019e.- \\')])
        body = bytes(raw)
    return body


def test_random_documents_decode_as_loads_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random bodies with the size thresholds lowered so that most arrays are cut out:
    loads_tensors returns what loads_strict does (arrays as numpy reads its lists), or
    raises the same error."""
    import random

    rng = random.Random(20261207)
    cut = 0
    for round_ in range(120):
        monkeypatch.setattr(strictjson, "TENSOR_MIN_BODY", rng.choice([0, 64]))
        monkeypatch.setattr(strictjson, "TENSOR_MIN_ARRAY", rng.choice([1, 8, 32]))
        monkeypatch.setattr(strictjson, "CHUNK", rng.choice([1, 3, 16, 1 << 20]))
        monkeypatch.setattr(strictjson, "KEEP_PARSER_BYTES", rng.choice([0, 64, 1 << 20]))
        for _ in range(25):
            body = _random_document(rng)
            try:
                want = loads_strict(body)
            except BadInput as e:
                with pytest.raises(BadInput) as got:
                    loads_tensors(body)
                assert str(got.value) == str(e), (round_, body)
                continue
            result = loads_tensors(body)
            same(result, want)
            if isinstance(result, np.ndarray):
                assert result.tobytes() == np.asarray(want).tobytes(), body  # -0.0 too
            cut += arrays_in(result)
    assert cut > 500  # the fast path really ran
