"""What the load-time batch-safety check costs, per benchmark model.

Loads each model of ``benchmarks/build/models`` (``make_bench_models.py``) as servekit
does, with ``batching: auto`` (verified) and ``batching: on`` (no check), alternately,
``--repeats`` times, and writes the medians to ``benchmarks/results/batch_safety.json``:
the load time either way, the check's own time, and the check's share of the load.

    .venv/bin/python benchmarks/batch_safety_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from servekit.config import ModelConfig
from servekit.metrics import Metrics
from servekit.repository import ModelSource, ServedModel

HERE = Path(__file__).resolve().parent
MODELS = HERE / "build" / "models"
OUT = HERE / "results" / "batch_safety.json"


async def load_once(path: Path, batching: str) -> tuple[float, float, str]:
    source = ModelSource(path.parent.parent.name, 1, path, None)
    served = ServedModel(source, ModelConfig.model_validate({"batching": batching}), Metrics())
    start = time.perf_counter()
    await served.load()
    seconds = time.perf_counter() - start
    assert served.batching is not None
    decision = served.batching
    await served.unload(5)
    return seconds, decision.seconds, decision.check


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for path in sorted(MODELS.glob("*/1/model.tflite")):
        name = path.parent.parent.name
        auto, on, check_s, checks = [], [], [], set()
        for _ in range(args.repeats):
            seconds, verify_s, check = await load_once(path, "auto")
            auto.append(seconds)
            check_s.append(verify_s)
            checks.add(check)
            on.append((await load_once(path, "on"))[0])
        results[name] = {
            "check": sorted(checks),
            "load_s_verified": round(statistics.median(auto), 4),
            "load_s_unchecked": round(statistics.median(on), 4),
            "check_s": round(statistics.median(check_s), 4),
            "check_share_of_load": round(statistics.median(check_s) / statistics.median(auto), 3),
            "repeats": args.repeats,
        }
        print(name, results[name])
    OUT.write_text(
        json.dumps(
            {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **results},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
