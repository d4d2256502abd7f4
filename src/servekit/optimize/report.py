"""What `servekit optimize` found: per-mode results, the suggestion, tables and JSON."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from servekit.optimize.common import Mode
from servekit.optimize.convert import Converted
from servekit.optimize.verify import Fidelity, Latency
from servekit.tensors import TensorSpec

# Modes this close to the fastest (relative time per row) count as equally fast even
# when the measured spread is smaller; the smaller file wins among them.
SPEED_TIE = 0.05


@dataclass
class ModeResult:
    """One mode's conversion, load check, fidelity and latency (or why it failed)."""

    mode: Mode
    converted: Converted | None = None
    runtime: str | None = None  # the runtime that loaded it, with version
    batch_dynamic: bool | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    fidelity: Fidelity | None = None
    latency: Latency | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int | None:
        return len(self.converted.content) if self.converted else None

    @property
    def verified(self) -> bool:
        return self.fidelity is not None and self.latency is not None


def suggest(results: list[ModeResult], min_agreement: float) -> ModeResult | None:
    """The fastest verified mode (time per row at its best batch size) that passes the bar.

    A mode is faster than another only by more than the timing noise: the larger of the
    two modes' spreads (their highest round minus their lowest) and SPEED_TIE of the
    fastest time. Modes within it of the fastest are a tie, won by a mode that keeps the
    original float inputs and outputs (clients of an int8-I/O model must quantize), then
    by the smallest file. (On a small model every mode may time within the noise: the
    smallest float-I/O file is then suggested every time, not whichever ran fastest.)
    """
    ok = [
        r
        for r in results
        if r.verified and r.fidelity is not None and r.fidelity.passes(min_agreement)
    ]
    if not ok:
        return None

    def speed(r: ModeResult) -> float:
        assert r.latency is not None
        return r.latency.best_row_us

    def width(r: ModeResult) -> float:
        assert r.latency is not None
        lo, hi = r.latency.best_row_range_us
        return hi - lo

    best = min(ok, key=speed)
    tied = [
        r
        for r in ok
        if speed(r) - speed(best) <= max(SPEED_TIE * speed(best), width(r), width(best))
    ]
    return min(tied, key=lambda r: (r.mode is Mode.INT8, r.size_bytes or 0, speed(r)))


# -- formatting -----------------------------------------------------------------------


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.2f} MB"


def fmt_us(us: float) -> str:
    if us < 10:
        return f"{us:.2f} µs"
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"


def fmt_ms(ms: float) -> str:
    return fmt_us(ms * 1000.0)


def fmt_diff(x: float) -> str:
    return f"{x:.2e}"


def fmt_share(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _spec_text(s: TensorSpec) -> str:
    q = (
        f" (scale {s.quantization.scale:.6g}, zero point {s.quantization.zero_point})"
        if s.quantization
        else ""
    )
    return f"{s.name}: {s.dtype.name}{list(s.shape)}{q}"


def _ops_text(converted: Converted | None) -> str:
    if converted is None or converted.ops is None:
        return "-"
    return ", ".join(o.describe() for o in converted.ops)


def fmt_spread(lat: Latency) -> str:
    half = 50 * lat.spread  # percent of the median
    return f"±{half:.1f}%" if half < 9.95 else f"±{half:.0f}%"


def _latency_text(lat: Latency) -> tuple[str, str]:
    best = lat.best_batch
    lo, hi = lat.best_row_range_us
    return (
        fmt_ms(lat.batch1_ms),
        f"{best}: {fmt_ms(lat.per_batch_ms[best])} per batch, {fmt_us(lat.best_row_us)} per row "
        f"({fmt_us(lo)} to {fmt_us(hi)} over {lat.rounds} rounds)",
    )


def mode_table(result: ModeResult, *, model_name: str) -> Table:
    """Key/value table of one mode's result."""
    table = Table(title=escape(f"{model_name}: mode {result.mode.value}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("mode", f"{result.mode.value} ({result.mode.describe})")
    table.add_row("size", fmt_size(result.size_bytes))
    loaded = (
        f"{result.runtime}, batch dimension {'dynamic' if result.batch_dynamic else 'FIXED'}"
        if result.runtime
        else "not loaded"
    )
    table.add_row("loaded by", escape(loaded))
    table.add_row("ops", escape(_ops_text(result.converted)))
    if result.inputs:
        table.add_row("inputs", escape("\n".join(_spec_text(s) for s in result.inputs)))
        table.add_row("outputs", escape("\n".join(_spec_text(s) for s in result.outputs)))
    fid = result.fidelity
    if fid is not None:
        table.add_row("samples", escape(fid.origin))
        table.add_row(
            "max / mean |diff|", f"{fmt_diff(fid.max_abs_diff)} / {fmt_diff(fid.mean_abs_diff)}"
        )
        if fid.agreement is not None:
            table.add_row("top-1 agreement", f"{fmt_share(fid.agreement)} ({fid.scored_output})")
        else:
            table.add_row("relative error", f"{fid.relative_error:.2e}")
        if fid.accuracy_tflite is not None:
            table.add_row(
                "accuracy",
                f"TFLite {fmt_share(fid.accuracy_tflite)}, "
                f"original {fmt_share(fid.accuracy_original)}",
            )
    if result.latency is not None:
        batch1, best = _latency_text(result.latency)
        table.add_row("latency, batch 1", f"{batch1} (median of {result.latency.rounds} rounds)")
        table.add_row("best batch", best)
    return table


def compare_table(
    results: list[ModeResult],
    *,
    model_name: str,
    suggested: ModeResult | None,
    min_agreement: float,
) -> Table:
    """All modes side by side; the suggested one is marked with '*'.

    It fits an 80-column terminal whole: no vertical rules, short headers (the caption
    says more), short cells, and the mode names never wrap or shrink.
    """
    verified = [r for r in results if r.fidelity is not None]
    fid0 = verified[0].fidelity if verified else None
    runtime = next((r.runtime for r in results if r.runtime), "no runtime")
    title = f"{model_name}: all modes, {runtime}"
    if fid0 is not None:
        title += f", {fid0.samples} samples"
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    names = max(len(f"{r.mode.value} *") for r in results)
    table.add_column("mode", justify="left", no_wrap=True, min_width=names)
    for col in ("size", "batch 1", "per row", "max diff", "top-1", "accuracy"):
        # A cell too wide for the terminal folds onto a second line, never "…".
        table.add_column(col, justify="right", overflow="fold")
    for r in results:
        mark = " *" if r is suggested else ""
        if not r.verified:
            reason = r.error or (r.warnings[0] if r.warnings else "not verified")
            size = fmt_size(r.size_bytes)
            table.add_row(
                f"{r.mode.value}{mark}", size, f"[red]{escape(reason)}[/]", "", "", "", ""
            )
            continue
        assert r.fidelity is not None and r.latency is not None
        agree = (
            fmt_share(r.fidelity.agreement)
            if r.fidelity.agreement is not None
            else f"rel {r.fidelity.relative_error:.1e}"
        )
        table.add_row(
            f"{r.mode.value}{mark}",
            fmt_size(r.size_bytes),
            fmt_ms(r.latency.batch1_ms),
            f"{fmt_us(r.latency.best_row_us)} {fmt_spread(r.latency)}",
            fmt_diff(r.fidelity.max_abs_diff),
            agree,
            fmt_share(r.fidelity.accuracy_tflite),
            style="bold" if r is suggested else None,
        )
    notes = []
    timed = [r.latency for r in results if r.latency is not None]
    if timed:
        batches = sorted({lat.best_batch for lat in timed})
        best = (
            f"at batch {batches[0]}, the best size of every mode"
            if len(batches) == 1
            else "at each mode's best batch size (report.json)"
        )
        notes.append(
            f"per row: {best},\n± half the range of the middle {timed[0].rounds - 2} of "
            f"{timed[0].rounds} rounds, timed in turns"
        )
    notes.append(
        "max diff: largest |difference| from the original's outputs;\n"
        "top-1: share of rows where the original's top class is kept"
    )
    if fid0 is not None and fid0.accuracy_original is not None:
        notes.append(f"original model accuracy {fmt_share(fid0.accuracy_original)}")
    if suggested is not None:
        notes.append(
            f"* suggested: {suggested.mode.value}, the fastest per row with top-1 agreement "
            f">= {min_agreement:g}\n(modes within the timing spread of it, or {SPEED_TIE:.0%}, "
            f"tie: float input/output first, then the smallest file)"
        )
    else:
        notes.append(f"no mode reaches top-1 agreement >= {min_agreement:g}")
    table.caption = escape("\n".join(notes))
    return table


# -- JSON ---------------------------------------------------------------------------------


def _fidelity_json(fid: Fidelity) -> dict[str, Any]:
    return {
        "samples": fid.samples,
        "data": fid.origin,
        "max_abs_diff": fid.max_abs_diff,
        "mean_abs_diff": fid.mean_abs_diff,
        "relative_error": fid.relative_error,
        "outputs": {
            d.name: {"max_abs_diff": d.max_abs_diff, "mean_abs_diff": d.mean_abs_diff}
            for d in fid.outputs
        },
        "scored_output": fid.scored_output,
        "top1_agreement": fid.agreement,
        "accuracy_original": fid.accuracy_original,
        "accuracy_tflite": fid.accuracy_tflite,
    }


def result_json(r: ModeResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": r.mode.value,
        "description": r.mode.describe,
        "size_bytes": r.size_bytes,
        "verified": r.verified,
    }
    if r.converted is not None:
        out["sha256"] = hashlib.sha256(r.converted.content).hexdigest()
        out["convert_seconds"] = round(r.converted.seconds, 3)
        out["ops"] = (
            None
            if r.converted.ops is None
            else [{"name": o.name, "version": o.version} for o in r.converted.ops]
        )
        out["flex_ops"] = r.converted.flex_ops
    if r.runtime is not None:
        out["runtime"] = r.runtime
        out["batch_dynamic"] = r.batch_dynamic
        out["inputs"] = [s.to_dict() for s in r.inputs]
        out["outputs"] = [s.to_dict() for s in r.outputs]
    if r.fidelity is not None:
        out["verification"] = _fidelity_json(r.fidelity)
    if r.latency is not None:
        out["latency"] = {
            "median_ms_by_batch_size": {str(b): ms for b, ms in r.latency.per_batch_ms.items()},
            "batch1_ms": r.latency.batch1_ms,
            "best_batch_size": r.latency.best_batch,
            "best_us_per_row": r.latency.best_row_us,
            "best_us_per_row_range": list(r.latency.best_row_range_us),
            "spread": r.latency.spread,
            "rounds": r.latency.rounds,
        }
    if r.error is not None:
        out["error"] = r.error
    if r.warnings:
        out["warnings"] = list(r.warnings)
    return out
