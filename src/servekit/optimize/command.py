"""The `servekit optimize` command (registered by servekit.cli).

Importing this module is cheap: TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from servekit import terminal
from servekit.errors import ServekitError
from servekit.optimize.common import Mode, OptimizeError, Samples, quiet_native_stderr
from servekit.terminal import console, fail

if TYPE_CHECKING:
    from servekit.optimize.report import ModeResult
    from servekit.optimize.source import SourceModel
    from servekit.runtime import TFLiteModel
    from servekit.tensors import Array


def optimize(
    model: Annotated[
        Path,
        typer.Argument(
            help="The trained model: a Keras file (.keras, .h5) or a SavedModel folder.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="REPO/NAME: the model folder in a servekit repository. The result becomes "
            "its next version, REPO/NAME/<n+1>/model.tflite, with report.json beside it.",
            show_default=False,
        ),
    ],
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            "-m",
            case_sensitive=False,
            help="none (float32), dynamic (int8 weights), float16 (float16 weights), int8 "
            "(full integer, int8 input/output) or int8-float-io (full integer, float "
            "input/output). [default: dynamic]",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Try every mode, print them side by side and write the suggested one: the "
            "fastest per row (at its best batch size) whose top-1 agreement reaches "
            "--min-agreement. The modes are timed taking turns, in rounds; modes within the "
            "rounds' spread (or 5%) of it tie: float input/output, then the smaller file, "
            "wins.",
        ),
    ] = False,
    representative_data: Annotated[
        Path | None,
        typer.Option(
            help="Calibration rows for int8 modes: a .npy file, an .npz file (arrays named "
            "after the inputs, or 'x'; optional 'y' labels) or a folder of them; a few "
            "hundred rows of training data. Without it, int8 modes are calibrated on random "
            "data, which can change their answers a lot (with a warning).",
        ),
    ] = None,
    validation_data: Annotated[
        Path | None,
        typer.Option(
            help="Rows to compare the original and TFLite models on: an .npz file with 'x' "
            "(or one array per input) and optional 'y' labels for accuracy. [default: the "
            "representative data, else random rows]",
        ),
    ] = None,
    min_agreement: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Top-1 agreement with the original model a mode needs to be suggested "
            "(for outputs that are not class scores: relative error at most 1 - this).",
        ),
    ] = 0.99,
    allow_select_tf_ops: Annotated[
        bool,
        typer.Option(
            "--allow-select-tf-ops",
            help="Keep ops TFLite has no kernel for as TensorFlow (Flex) ops. The serving "
            "runtime needs the Flex delegate for them; ai-edge-litert's wheel has none.",
        ),
    ] = False,
    bench_time: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=60.0,
            help="Seconds to time each mode at each batch size for latency (in rounds).",
        ),
    ] = 0.5,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show TensorFlow's own log output.")
    ] = False,
) -> None:
    """Convert a Keras or SavedModel model to a verified TFLite model in a repository.

    Each mode's model is loaded with servekit's runtime, compared with the original on
    the same rows (max/mean difference, top-1 agreement, accuracy with labels) and timed
    at batch sizes 1, 8 and 32, the modes taking turns. Needs TensorFlow:
    scripts/install.sh optimize, or pip install '.[optimize]' in servekit's checkout.

    Examples:

      servekit optimize model.keras --out models/digits

      servekit optimize model.keras --out models/digits --mode int8 --representative-data train.npz

      servekit optimize saved_model/ --out models/digits --compare --validation-data test.npz

      servekit serve models
    """
    try:
        _run(
            model=model,
            out=out,
            modes=_modes(mode, compare),
            compare=compare,
            representative_data=representative_data,
            validation_data=validation_data,
            min_agreement=min_agreement,
            allow_select_tf_ops=allow_select_tf_ops,
            bench_time=bench_time,
            verbose=verbose,
        )
    except ServekitError as e:
        fail(str(e))


def _modes(mode: Mode | None, compare: bool) -> list[Mode]:
    if compare and mode is not None:
        raise OptimizeError("use --mode or --compare, not both (--compare tries every mode)")
    return list(Mode) if compare else [mode or Mode.DYNAMIC]


@dataclass
class _Work:
    """What every mode is evaluated against, and the progress display."""

    tf: Any
    source: SourceModel
    calibration: Samples | None
    validation: Samples
    reference: dict[str, Array]
    compare: bool
    allow_select_tf_ops: bool
    bench_time: float
    quiet: bool
    progress: Progress
    task: TaskID

    def step(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def done(self, message: str | None = None, steps: int = 1) -> None:
        self.progress.advance(self.task, steps)
        if message:
            self.progress.console.print(message, highlight=False, soft_wrap=True)


STEPS_PER_MODE = 3  # convert, load and compare, time


def _evaluate(work: _Work, mode: Mode) -> tuple[ModeResult, TFLiteModel | None]:
    """Convert, load with servekit's runtime and compare one mode; the loaded model to
    time (None if it did not load).

    Without --compare a failure is an error; with it, it is recorded in the mode's row.
    """
    from servekit.optimize.convert import convert
    from servekit.optimize.report import ModeResult, fmt_size
    from servekit.optimize.verify import (
        batch_is_dynamic,
        compare_outputs,
        load_for_serving,
        run_tflite,
        runtime_label,
    )

    result = ModeResult(mode)
    name = mode.value
    work.step(f"{name}: converting")
    try:
        with quiet_native_stderr(work.quiet):
            result.converted = convert(
                work.tf,
                work.source,
                mode,
                calibration=work.calibration,
                allow_select_tf_ops=work.allow_select_tf_ops,
            )
    except OptimizeError as e:
        if not work.compare:
            raise
        result.error = str(e)
        work.done(f"{name}: [red]conversion failed[/]: {escape(str(e))}", STEPS_PER_MODE)
        return result, None
    work.done()

    work.step(f"{name}: loading with servekit's runtime and comparing")
    runtime = runtime_label()
    flex = result.converted.flex_ops
    try:
        with quiet_native_stderr(work.quiet):
            model = load_for_serving(result.converted.content)
    except ServekitError as e:
        if flex:
            result.warnings.append(
                f"{name}: the model keeps TensorFlow (Flex) ops {flex}, which {runtime} cannot "
                f"run (its wheel has no Flex delegate): it is not verified, and `servekit "
                f"serve` here will list this version as UNAVAILABLE (server not ready)"
            )
            work.done(f"{name}: {fmt_size(result.size_bytes)}, [yellow]not verified[/]", 2)
            return result, None
        message = (
            f"the converted model (mode {name}) does not load in {runtime}: {e}; TensorFlow "
            f"{work.tf.__version__}'s converter may emit op versions newer than the runtime "
            f"knows: upgrade ai-edge-litert or use an older TensorFlow"
        )
        if not work.compare:
            raise OptimizeError(message) from None
        result.error = message
        work.done(f"{name}: [red]does not load[/]", 2)
        return result, None
    if flex:
        result.warnings.append(
            f"{name}: the model keeps TensorFlow (Flex) ops {flex}; {runtime} loads it here, "
            f"but a serving runtime without the Flex delegate will not"
        )
    result.runtime = runtime
    result.batch_dynamic = batch_is_dynamic(model)
    result.inputs = model.signature.inputs
    result.outputs = model.signature.outputs
    if not result.batch_dynamic:
        result.warnings.append(
            f"{name}: the batch dimension is fixed in the model (input shape_signature "
            f"{[list(s.shape) for s in model.signature.inputs]}): servekit will serve it "
            f"unbatched"
        )
    got = run_tflite(model, work.validation.inputs)
    result.fidelity = compare_outputs(work.reference, got, work.validation)
    work.done()
    return result, model


def _time(work: _Work, evaluated: list[tuple[ModeResult, TFLiteModel | None]]) -> None:
    """Time every loaded mode, the modes taking turns (see ``measure_latencies``)."""
    from servekit.optimize.report import fmt_ms, fmt_size, fmt_spread, fmt_us
    from servekit.optimize.verify import measure_latencies

    timed = [(r, m) for r, m in evaluated if m is not None]
    if not timed:
        return
    names = ", ".join(r.mode.value for r, _ in timed)
    work.step(escape(f"measuring latency ({names})"))
    latencies = measure_latencies([m for _, m in timed], work.validation, budget_s=work.bench_time)
    for (result, _), latency in zip(timed, latencies, strict=True):
        result.latency = latency
        agree = result.fidelity.agreement if result.fidelity is not None else None
        work.done(
            f"{result.mode.value}: {fmt_size(result.size_bytes)}, "
            + (f"top-1 agreement {agree:.4f}, " if agree is not None else "")
            + f"batch 1 {fmt_ms(latency.batch1_ms)}, "
            + f"per row {fmt_us(latency.best_row_us)} {fmt_spread(latency)} "
            + f"(batch {latency.best_batch}), loaded by {escape(result.runtime or '')}"
        )


def _run(
    *,
    model: Path,
    out: Path,
    modes: list[Mode],
    compare: bool,
    representative_data: Path | None,
    validation_data: Path | None,
    min_agreement: float,
    allow_select_tf_ops: bool,
    bench_time: float,
    verbose: bool,
) -> None:
    # Everything that can be checked without TensorFlow is checked first: it is quick.
    from servekit.optimize.publish import model_dir
    from servekit.optimize.source import detect_format

    fmt = detect_format(model)
    folder = model_dir(out)
    for path, flag in (
        (representative_data, "--representative-data"),
        (validation_data, "--validation-data"),
    ):
        if path is not None and not path.exists():
            raise OptimizeError(f"{flag} {path} does not exist")

    from servekit.optimize.data import load_samples, random_samples
    from servekit.optimize.source import import_tensorflow, load_source

    notes: list[str] = []

    def warn(message: str) -> None:
        """Say it now and keep it for report.json."""
        notes.append(message)
        terminal.warn(message)

    quiet = not verbose
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        Progress(*columns, console=console, transient=True) as progress,
        tempfile.TemporaryDirectory(prefix="servekit-optimize-") as tmp,
    ):
        task = progress.add_task("importing TensorFlow", total=3 + STEPS_PER_MODE * len(modes))

        def done(message: str) -> None:
            progress.advance(task)
            progress.console.print(message, highlight=False, soft_wrap=True)

        with quiet_native_stderr(quiet):
            tf = import_tensorflow()
        done(f"TensorFlow {tf.__version__}")

        progress.update(task, description=escape(f"loading {model}"))
        with quiet_native_stderr(quiet):
            source = load_source(tf, model, fmt, Path(tmp))
        inputs_text = ", ".join(f"{s.name} {s.describe()}" for s in source.inputs)
        done(escape(f"loaded {model} ({fmt}): inputs {inputs_text}"))

        progress.update(task, description="reading data, running the original model")
        rep = None
        if representative_data is not None:
            rep = load_samples(representative_data, source.inputs, what="representative data")
        calibration = rep
        if calibration is None and any(m.needs_calibration for m in modes):
            calibration = random_samples(source.inputs)
            warn(
                "no --representative-data: int8 modes are calibrated on random uniform [0, 1) "
                "data, which rarely matches real inputs; pass real rows for usable accuracy"
            )
        if validation_data is not None:
            val = load_samples(validation_data, source.inputs, what="validation data")
        elif rep is not None:
            val = rep
        else:
            val = random_samples(source.inputs)
            warn(
                "no --validation-data or --representative-data: verifying on random rows; "
                "agreement on random data says little, and there is no accuracy without labels"
            )
        with quiet_native_stderr(quiet):
            reference = source.predict(val.inputs)
        same = " (the calibration rows; --validation-data gives held-out ones)"
        done(escape(f"verification data: {val.origin}{same if val is rep else ''}"))

        work = _Work(
            tf=tf,
            source=source,
            calibration=calibration,
            validation=val,
            reference=reference,
            compare=compare,
            allow_select_tf_ops=allow_select_tf_ops,
            bench_time=bench_time,
            quiet=quiet,
            progress=progress,
            task=task,
        )
        evaluated = [_evaluate(work, m) for m in modes]
        _time(work, evaluated)
        results = [r for r, _ in evaluated]

    for r in results:
        for w in r.warnings:
            warn(w)
    chosen = _choose(results, model_name=model.name, compare=compare, min_agreement=min_agreement)
    if rep is None and calibration is not None:
        _random_calibration(results, notes)
    if chosen.fidelity is not None and not chosen.fidelity.passes(min_agreement):
        fid = chosen.fidelity
        what = (
            f"top-1 agreement {fid.agreement:.4f}"
            if fid.agreement is not None
            else f"relative error {fid.relative_error:.2e}"
        )
        warn(
            f"{what} misses --min-agreement {min_agreement:g}; `--compare` shows which modes "
            f"keep the original's answers"
        )
    report = _report(
        work,
        results,
        chosen,
        fmt=fmt,
        min_agreement=min_agreement,
        notes=notes,
    )
    _publish(folder, chosen, report)


def _random_calibration(results: list[ModeResult], notes: list[str]) -> None:
    """After the table, where it is read: what random calibration did to the int8 modes."""
    hurt = [r for r in results if r.mode.needs_calibration and r.fidelity is not None]
    if not hurt:
        return
    worst = max(hurt, key=lambda r: r.fidelity.max_abs_diff if r.fidelity else 0.0)
    assert worst.fidelity is not None
    modes = " and ".join(r.mode.value for r in hurt)
    message = (
        f"{modes} {'was' if len(hurt) == 1 else 'were'} calibrated on RANDOM data (no "
        f"--representative-data): {worst.mode.value}'s outputs differ from the original "
        f"model's by up to {worst.fidelity.max_abs_diff:.3f} on "
        f"{worst.fidelity.samples} verification rows. Quantization ranges come from the "
        f"calibration rows: pass a few hundred real input rows, e.g. "
        f"--representative-data train.npz (an .npz with 'x' or one array per input)."
    )
    notes.append(message)
    terminal.alarm(message)


def _choose(
    results: list[ModeResult], *, model_name: str, compare: bool, min_agreement: float
) -> ModeResult:
    """Print the table; the mode to write (the suggestion with --compare)."""
    from servekit.optimize.report import compare_table, mode_table, suggest

    if not compare:
        console.print(mode_table(results[0], model_name=model_name))
        return results[0]
    chosen = suggest(results, min_agreement)
    console.print(
        compare_table(results, model_name=model_name, suggested=chosen, min_agreement=min_agreement)
    )
    if chosen is None:
        raise OptimizeError(
            f"no mode reaches top-1 agreement {min_agreement:g} with the original model: "
            f"nothing written (check the data or lower --min-agreement)"
        )
    return chosen


def _report(
    work: _Work,
    results: list[ModeResult],
    chosen: ModeResult,
    *,
    fmt: str,
    min_agreement: float,
    notes: list[str],
) -> dict[str, Any]:
    """The content of report.json."""
    from servekit import __version__
    from servekit.optimize.report import result_json

    source = work.source
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "servekit_version": __version__,
        "tensorflow_version": str(work.tf.__version__),
        "source": {
            "path": str(source.path),
            "format": fmt,
            "signature": source.signature_key,
            "inputs": [
                {"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)}
                for s in source.inputs
            ],
            "outputs": list(source.outputs),
        },
        "mode": chosen.mode.value,
        "chosen_by": "compare" if work.compare else "mode",
        "min_agreement": min_agreement,
        "calibration_data": work.calibration.origin if work.calibration is not None else None,
        "validation_data": work.validation.origin,
        "result": result_json(chosen),
        "warnings": notes,
    }
    if work.compare:
        report["compare"] = [result_json(r) for r in results]
    return report


def _publish(folder: Path, chosen: ModeResult, report: dict[str, Any]) -> None:
    from servekit.optimize.publish import publish
    from servekit.optimize.report import fmt_size

    assert chosen.converted is not None  # a chosen mode converted
    target, wrote_config = publish(folder, chosen.converted.content, report)

    def say(text: str) -> None:
        console.print(escape(text), highlight=False, soft_wrap=True)

    say(
        f"wrote {target / 'model.tflite'} (mode {chosen.mode.value}, "
        f"{fmt_size(chosen.size_bytes)}) and {target / 'report.json'}"
    )
    if wrote_config:
        say(f"wrote {folder / 'config.yaml'} (default serving settings)")
    say(f"serve it: servekit serve {folder.parent}")
