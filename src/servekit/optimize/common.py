"""Types shared by the optimize steps (no TensorFlow here)."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servekit.errors import ServekitError
from servekit.tensors import Array

# servekit is on no package index: the extra installs from a checkout of its repository.
EXTRA_HINT = "scripts/install.sh optimize (or pip install '.[optimize]') in servekit's checkout"


class OptimizeError(ServekitError):
    """A model, a data file or an option cannot be used; the message says what to fix."""


class Mode(str, enum.Enum):
    """How the TFLite model's weights and activations are stored."""

    NONE = "none"  # float32, no optimization
    DYNAMIC = "dynamic"  # int8 weights, float activations (dynamic-range)
    FLOAT16 = "float16"  # float16 weights
    INT8 = "int8"  # int8 weights and activations, int8 input/output
    INT8_FLOAT_IO = "int8-float-io"  # int8 weights and activations, float input/output

    @property
    def needs_calibration(self) -> bool:
        return self in (Mode.INT8, Mode.INT8_FLOAT_IO)

    @property
    def describe(self) -> str:
        return MODE_DESCRIPTIONS[self]


MODE_DESCRIPTIONS = {
    Mode.NONE: "float32, no quantization",
    Mode.DYNAMIC: "dynamic-range: int8 weights, float activations",
    Mode.FLOAT16: "float16 weights",
    Mode.INT8: "full integer, int8 input/output",
    Mode.INT8_FLOAT_IO: "full integer, float input/output",
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of the original model; -1 marks a dimension of any size (rows first)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"


@dataclass(frozen=True, slots=True)
class Samples:
    """Input rows for calibration or verification, with optional labels."""

    inputs: dict[str, Array]
    labels: Array | None
    origin: str  # shown to users: where the rows came from

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> Samples:
        if n >= self.rows:
            return self
        return Samples(
            {k: v[:n] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:n],
            self.origin,
        )


@dataclass
class NativeLog:
    """What TensorFlow's C++ code wrote to stderr while it was silenced."""

    text: str = ""
    lines: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[NativeLog]:
    """Send file descriptor 2 to a temporary file while TensorFlow works.

    TensorFlow's C++ logging, absl and the converter write straight to fd 2; Python's
    sys.stderr goes there too. The console output of ``servekit optimize`` stays readable,
    and the text is kept for error messages. ``enabled=False`` (``--verbose``) shows it all.
    """
    log = NativeLog()
    if not enabled:
        yield log
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.text = tmp.read().decode(errors="replace")
            log.lines = log.text.splitlines()


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error, cut to ``limit`` characters."""
    text = str(e)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."
