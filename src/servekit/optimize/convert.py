"""SavedModel → TFLite flatbuffer in one of the quantization modes (TensorFlow needed)."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from servekit.optimize.common import Mode, OptimizeError, Samples, first_line
from servekit.optimize.source import SourceModel
from servekit.tensors import Array

CALIBRATION_ROWS = 500  # representative rows fed to the int8 calibrator, at most
FLEX_PREFIX = "Flex"


@dataclass(frozen=True, slots=True)
class OpInfo:
    """One operator code of a TFLite model."""

    name: str  # builtin name (FULLY_CONNECTED) or custom code (FlexCumprod)
    version: int
    custom: bool

    @property
    def flex(self) -> bool:
        return self.custom and self.name.startswith(FLEX_PREFIX)

    def describe(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True, slots=True)
class Converted:
    mode: Mode
    content: bytes
    ops: tuple[OpInfo, ...] | None  # None if the flatbuffer could not be inspected
    seconds: float

    @property
    def flex_ops(self) -> list[str]:
        return sorted(o.name.removeprefix(FLEX_PREFIX) for o in self.ops or () if o.flex)


def _representative(calibration: Samples) -> Iterator[dict[str, Array]]:
    rows = calibration.head(CALIBRATION_ROWS)
    for i in range(rows.rows):
        yield {k: v[i : i + 1] for k, v in rows.inputs.items()}


def convert(
    tf: Any,
    source: SourceModel,
    mode: Mode,
    *,
    calibration: Samples | None,
    allow_select_tf_ops: bool,
) -> Converted:
    """Convert ``source`` in ``mode``; a one-line OptimizeError when the converter refuses."""
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(source.saved_model_dir), signature_keys=[source.signature_key]
        )
    except Exception as e:
        raise OptimizeError(
            f"the TFLite converter cannot read the model: {first_line(e)}"
        ) from None
    ops_sets = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode is not Mode.NONE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is Mode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    if mode.needs_calibration:
        if calibration is None:
            raise OptimizeError(f"mode {mode.value} needs representative data")
        converter.representative_dataset = lambda: _representative(calibration)
        ops_sets = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode is Mode.INT8:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if allow_select_tf_ops:
        ops_sets.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops_sets
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # The calibrator uses tf.lite.Interpreter, which warns that it is deprecated.
            warnings.simplefilter("ignore")
            content = bytes(converter.convert())
    except Exception as e:
        raise OptimizeError(describe_conversion_error(e, mode, allow_select_tf_ops)) from None
    seconds = time.perf_counter() - start
    return Converted(mode, content, model_ops(content), seconds)


def _error_code_name(err: Any) -> str:
    try:
        return str(type(err).ErrorCode.Name(err.error_code))
    except (AttributeError, ValueError):
        return ""


def _op_name(err: Any) -> str:
    name = str(getattr(getattr(err, "operator", None), "name", "") or "")
    return name.removeprefix("tf.")


def describe_conversion_error(e: BaseException, mode: Mode, allow_select_tf_ops: bool) -> str:
    """One line from a ConverterError: which ops, and what to do about them."""
    text = str(e)
    flex: set[str] = set()
    custom: set[str] = set()
    for err in getattr(e, "errors", None) or ():
        code = _error_code_name(err)
        if code == "ERROR_NEEDS_FLEX_OPS" and _op_name(err):
            flex.add(_op_name(err))
        elif code == "ERROR_NEEDS_CUSTOM_OPS" and _op_name(err):
            custom.add(_op_name(err))
    for match in re.finditer(r"TF Select ops: ([^\n]+)", text):
        flex.update(o.strip() for o in match.group(1).split(",") if o.strip())
    for match in re.finditer(r"Custom ops: ([^\n]+)", text):
        custom.update(o.strip() for o in match.group(1).split(",") if o.strip())
    custom -= flex
    if custom:
        return (
            f"the model uses ops that TFLite does not support, not even as TensorFlow ops: "
            f"{', '.join(sorted(custom))}; replace them in the model"
        )
    if flex and not allow_select_tf_ops:
        return (
            f"the model uses TensorFlow ops without a TFLite builtin kernel: "
            f"{', '.join(sorted(flex))}; rerun with --allow-select-tf-ops to keep them as "
            f"TensorFlow (Flex) ops (the serving runtime then needs the Flex delegate)"
        )
    quant = re.search(r"[Qq]uantization (?:is )?not (?:yet )?supported for op:? '?([\w.]+)'?", text)
    if quant and mode.needs_calibration:
        return (
            f"mode {mode.value}: op {quant.group(1).removeprefix('tf.')} has no integer "
            f"kernel; try --mode dynamic or --mode float16"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = next(
        (ln.split("error: ", 1)[1] for ln in lines if "error: " in ln and "loc(" not in ln),
        lines[0] if lines else type(e).__name__,
    )
    return f"TFLite conversion (mode {mode.value}) failed: {first_line(useful)}"


def model_ops(content: bytes) -> tuple[OpInfo, ...] | None:
    """The operator codes in a flatbuffer (builtin name or custom code, and version)."""
    try:
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        return None
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
        names = {
            v: k
            for k, v in vars(schema.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)
        }
        out = []
        for code in model.operatorCodes:
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            custom = code.customCode
            if custom:
                name = custom.decode() if isinstance(custom, bytes) else str(custom)
                out.append(OpInfo(name, int(code.version), True))
            else:
                out.append(OpInfo(names.get(builtin, str(builtin)), int(code.version), False))
        return tuple(out)
    except Exception:  # inspection is informative only
        return None
