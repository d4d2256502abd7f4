"""The `servekit bench` command: an async load generator for a running server.

It asks the server for the model's inputs (``GET /v2/models/<model>``), builds one
valid request of ``--rows`` rows in the chosen protocol, checks that the server
accepts it, then keeps ``--concurrency`` requests in flight for ``--duration``
seconds (closed loop, keep-alive connections, :mod:`servekit.loadgen`) and prints the
throughput, latency percentiles and errors by status.

The request builders are plain functions so the benchmark scripts can reuse them.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any

import numpy as np
import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from servekit.loadgen import LoadResult, RawClient, Response, closed_loop
from servekit.tensors import V2_TO_NUMPY, Array, v2_datatype
from servekit.terminal import console, err_console, fail


class Protocol(str, Enum):
    v1 = "v1"
    v2 = "v2"
    v2_binary = "v2-binary"


class Fill(str, Enum):
    random = "random"
    zeros = "zeros"


@dataclass(frozen=True, slots=True)
class InputMeta:
    """One model input as the V2 metadata endpoint describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request, encoded once and sent again and again."""

    path: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class BenchError(Exception):
    """Something the user can fix: shown as one line."""


# -- building the request ------------------------------------------------------------


def parse_inputs(metadata: dict[str, Any]) -> list[InputMeta]:
    """The inputs of a V2 model metadata response."""
    try:
        return [
            InputMeta(str(i["name"]), str(i["datatype"]), tuple(int(d) for d in i["shape"]))
            for i in metadata["inputs"]
        ]
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"unexpected model metadata: {str(metadata)[:200]}") from None


def make_arrays(
    inputs: Sequence[InputMeta], rows: int, fill: Fill, seed: int = 0
) -> dict[str, Array]:
    """Arrays of the inputs' dtypes: ``rows`` rows, other variable dimensions 1.

    Random data is uniform in [0, 1) for floats, 0..9 for integers (a valid class or
    index for most models), either for booleans, empty strings for BYTES.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for spec in inputs:
        dtype = V2_TO_NUMPY.get(spec.datatype)
        if dtype is None:
            raise BenchError(f"input '{spec.name}' has an unknown datatype {spec.datatype!r}")
        shape = (rows, *(d if d > 0 else 1 for d in spec.shape[1:]))
        if dtype.kind == "O":
            out[spec.name] = np.full(shape, b"", dtype=object)
        elif fill is Fill.zeros:
            out[spec.name] = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "f":
            out[spec.name] = rng.random(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return out


def _jsonable(arr: Array) -> Any:
    if arr.dtype.kind == "O":
        return [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()]
    return arr.tolist()


def _raw_bytes(arr: Array) -> bytes:
    if arr.dtype.kind != "O":
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return b"".join(struct.pack("<I", len(v)) + bytes(v) for v in arr.reshape(-1))


def encode_request(model: str, arrays: dict[str, Array], protocol: Protocol) -> BenchRequest:
    """One request for ``arrays`` in the given protocol."""
    if protocol is Protocol.v1:
        body: dict[str, Any]
        if len(arrays) == 1:  # TF Serving's row format
            body = {"instances": _jsonable(next(iter(arrays.values())))}
        else:  # columnar: one entry per input
            body = {"inputs": {k: _jsonable(v) for k, v in arrays.items()}}
        return BenchRequest(f"/v1/models/{model}:predict", orjson.dumps(body), "application/json")
    entries = []
    for name, arr in arrays.items():
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(arr.shape),
            "datatype": v2_datatype(arr.dtype),
        }
        if protocol is Protocol.v2:
            entry["data"] = _jsonable(arr.reshape(-1))
        entries.append(entry)
    path = f"/v2/models/{model}/infer"
    if protocol is Protocol.v2:
        return BenchRequest(path, orjson.dumps({"inputs": entries}), "application/json")
    blobs = [_raw_bytes(arr) for arr in arrays.values()]
    for entry, blob in zip(entries, blobs, strict=True):
        entry["parameters"] = {"binary_data_size": len(blob)}
    header = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
    return BenchRequest(
        path,
        b"".join([header, *blobs]),
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(header))},
    )


def _server_error(r: Response) -> str:
    try:
        message = orjson.loads(r.body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message) if message else r.body[:200].decode("utf-8", "replace")


async def prepare_request(
    url: str,
    model: str,
    protocol: Protocol,
    rows: int,
    fill: Fill,
    headers: dict[str, str] | None = None,
) -> BenchRequest:
    """Read the model's inputs from the server, build the request, check it is accepted."""
    client = RawClient(url, headers)
    try:
        try:
            r = await asyncio.wait_for(client.request("GET", f"/v2/models/{model}"), 30)
        except (OSError, asyncio.IncompleteReadError) as e:
            raise BenchError(f"cannot reach {url}: {str(e) or type(e).__name__}") from None
        if r.status != 200:
            raise BenchError(f"model {model!r}: the server answered {r.status}: {_server_error(r)}")
        try:
            metadata = orjson.loads(r.body)
        except orjson.JSONDecodeError:
            raise BenchError(f"{url} is not a servekit (or V2) server: bad metadata") from None
        request = encode_request(model, make_arrays(parse_inputs(metadata), rows, fill), protocol)
        probe = RawClient(url, {**(headers or {}), **request.headers})
        try:
            r = await asyncio.wait_for(
                probe.request("POST", request.path, request.body, request.content_type), 60
            )
        except (OSError, asyncio.IncompleteReadError) as e:
            raise BenchError(f"the first request failed: {str(e) or type(e).__name__}") from None
        finally:
            await probe.close()
        if r.status != 200:
            raise BenchError(f"the server refused the request: {r.status}: {_server_error(r)}")
        return request
    finally:
        await client.close()


# -- running -------------------------------------------------------------------------


@dataclass(slots=True)
class Live:
    """Counters the progress bar reads while the load runs."""

    responses: int = 0
    failures: int = 0  # non-200 answers and connection errors


async def run_load(
    url: str,
    request: BenchRequest,
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 30.0,
    headers: dict[str, str] | None = None,
    live: Live | None = None,
) -> LoadResult:
    """``concurrency`` closed-loop users sending ``request`` for ``duration_s`` seconds."""
    all_headers = {**(headers or {}), **request.headers}
    counts = live or Live()

    async def send(client: RawClient) -> Response:
        try:
            r = await asyncio.wait_for(
                client.request("POST", request.path, request.body, request.content_type),
                timeout_s,
            )
        except BaseException:
            counts.failures += 1
            raise
        counts.responses += 1
        if r.status != 200:
            counts.failures += 1
        return r

    return await closed_loop(
        lambda: RawClient(url, all_headers),
        send,
        concurrency=concurrency,
        duration_s=duration_s,
    )


def summarize(result: LoadResult, rows: int) -> dict[str, Any]:
    """Throughput, latency percentiles (ms, successful requests) and errors by kind."""
    ok = sorted(result.ok())

    def ms(q: float) -> float | None:
        return round(LoadResult.percentile(ok, q) * 1000, 3) if ok else None

    errors: Counter[str] = Counter(
        {f"HTTP {status}": len(v) for status, v in result.latencies.items() if status != 200}
    )
    for e in result.errors:
        errors[e.split(":", 1)[0]] += 1
    rps = result.throughput()
    return {
        "duration_s": round(result.duration_s, 3),
        "requests": result.count + len(result.errors),
        "ok": len(ok),
        "throughput_rps": round(rps, 2),
        "rows_per_s": round(rps * rows, 2),
        "latency_ms": {
            "p50": ms(50),
            "p90": ms(90),
            "p99": ms(99),
            "mean": round(sum(ok) / len(ok) * 1000, 3) if ok else None,
            "max": round(ok[-1] * 1000, 3) if ok else None,
        },
        "errors": dict(sorted(errors.items())),
    }


async def _bench(
    url: str,
    model: str,
    protocol: Protocol,
    rows: int,
    fill: Fill,
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    headers: dict[str, str],
    show_progress: bool,
) -> dict[str, Any]:
    request = await prepare_request(url, model, protocol, rows, fill, headers)
    live = Live()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=err_console,
        transient=True,
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task(
            f"{model} {protocol.value} x{concurrency}", total=duration_s, stats=""
        )
        load = asyncio.ensure_future(
            run_load(
                url,
                request,
                concurrency=concurrency,
                duration_s=duration_s,
                timeout_s=timeout_s,
                headers=headers,
                live=live,
            )
        )
        start = time.monotonic()
        while not load.done():
            await asyncio.wait({load}, timeout=0.2)
            elapsed = time.monotonic() - start
            progress.update(
                task,
                completed=min(elapsed, duration_s),
                stats=f"{live.responses} responses, {live.responses / max(elapsed, 1e-9):.0f}/s, "
                f"{live.failures} errors",
            )
        result = load.result()
    summary = summarize(result, rows)
    summary.update(
        {
            "url": url,
            "model": model,
            "protocol": protocol.value,
            "rows": rows,
            "concurrency": concurrency,
            "request_bytes": len(request.body),
        }
    )
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    console.print(
        f"[bold]{s['model']}[/] over {s['protocol']} at {s['url']}: {s['concurrency']} "
        f"concurrent, {s['rows']} row(s) per request, {s['request_bytes']} B body",
        highlight=False,
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests", f"{s['requests']} in {s['duration_s']:.1f} s")
    table.add_row("throughput", f"{s['throughput_rps']:.1f} req/s")
    if s["rows"] > 1:
        table.add_row("rows", f"{s['rows_per_s']:.1f} rows/s")
    for key in ("p50", "p90", "p99", "mean", "max"):
        table.add_row(f"latency {key}", "-" if lat[key] is None else f"{lat[key]:.2f} ms")
    errors = s["errors"]
    table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0")
    console.print(table)


def bench(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000")],
    model: Annotated[str, typer.Option("--model", "-m", help="The model to load-test.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=10_000, help="Requests in flight.")
    ] = 8,
    duration: Annotated[
        float, typer.Option("--duration", "-d", min=0.1, help="Seconds of load.")
    ] = 10.0,
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="v1 (TF Serving JSON), v2 (Open Inference JSON) or v2-binary "
            "(binary tensor data: for image-sized inputs)."
        ),
    ] = Protocol.v2,
    rows: Annotated[int, typer.Option(min=1, help="Rows (batch size) per request.")] = 1,
    data: Annotated[Fill, typer.Option(help="Input values: random or zeros.")] = Fill.random,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds before a request counts as failed.")
    ] = 30.0,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SERVEKIT_BENCH_API_KEY", help="Sent as Authorization: Bearer."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Load-test a model on a running server; print throughput, latency and errors.

    Builds a valid request from the model's metadata (shape and dtype of each input),
    then keeps --concurrency requests in flight for --duration seconds.

    Examples:

      servekit bench http://127.0.0.1:8000 --model digits

      servekit bench http://127.0.0.1:8000 -m digits -c 64 -d 30 --protocol v1

      servekit bench http://127.0.0.1:8000 -m mobilenet --protocol v2-binary --rows 4
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        summary = asyncio.run(
            _bench(
                url,
                model,
                protocol,
                rows,
                data,
                concurrency,
                duration,
                timeout,
                headers,
                show_progress=not as_json,
            )
        )
    except BenchError as e:
        fail(str(e))
    except ValueError as e:  # a URL RawClient cannot use
        fail(str(e))
    except TimeoutError:
        fail(f"{url} did not answer in time")
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        _print_summary(summary)
    if summary["ok"] == 0:
        raise typer.Exit(1)
