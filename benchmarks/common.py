"""Shared benchmark helpers: the machine's measured matmul peak, and the results file each benchmark writes."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch


def matmul_peak_flops(n: int = 1536, reps: int = 20, dtype=torch.float32) -> float:
    """Best sustained FLOP/s of an n x n x n matmul over `reps` runs (after warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


RESULTS = Path(__file__).resolve().parent / "results"


def results_path(name: str, out: str | None = None) -> Path:
    """Where a benchmark writes its results: `--out`, else the committed benchmarks/results/<name>.json."""
    return Path(out) if out else RESULTS / f"{name}.json"


def write_results(name: str, results: dict, out: str | None = None, device: str | None = None,
                  flat: bool = False) -> Path:
    """Write a benchmark's ratios with the machine's CPU kind, threads, date and the command that made them, for
    `detoxrl docs` to render (docs/benchmarks.md). Commit the file; numbers without one are not quoted anywhere.
    `flat`: the results' keys at the top level beside those (gpu_check's file format), not under `results`."""
    from detoxrl import hardware

    record = {"benchmark": name,
              "command": " ".join(["python", f"benchmarks/{name}.py", *map(shlex.quote, sys.argv[1:])]),
              "cpu_kind": hardware.cpu_kind(hardware.detect("cpu")),
              "threads": torch.get_num_threads(),
              "date": datetime.date.today().isoformat(),
              **({"device": device} if device else {}),
              **(results if flat else {"results": results})}
    path = results_path(name, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"results: {path}", flush=True)
    return path
