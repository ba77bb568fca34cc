"""Reproducibility check: rerun one stage with unchanged params and compare its metrics with the committed ones.

    detoxrl check-repro ppo             # = dvc repro --force --single-item ppo, then compare with git HEAD
    detoxrl check-repro evaluate@ppo --rtol 1e-6

The stage's metrics files come from dvc.yaml (its `metrics:` outputs); the reference is their committed version
(`git show <rev>:<path>`). Every number must match exactly by default: on the CPU the stages are deterministic
(seeded sampling, seeded training, fixed thread count per run), so the same params give the same bits. Wall-clock
keys (e.g. `ppo.time_step_s`) are measured time, not results, and are not compared. On a GPU, cuBLAS/cuDNN kernels
may sum in a different order between runs (atomics, autotuned algorithms), so training metrics drift in their last
digits: pass a tolerance there (e.g. `--rtol 1e-4`).

What it promises: on the same CPU kind, identical bits. On another kind, a rerun is another draw of the
training randomness, so it is held to the spread over seeds: the evaluation of one seed of a `seeded:` method
(`evaluate_seeded@ppo-0`) must put each headline metric inside that method's committed one-run interval
(metrics/summary.json `models.<method>.one_run`: the two-way bootstrap drawing one seed and the prompts, i.e. where
another single run lands). `--upstream` reruns the stage's whole upstream first (`dvc repro --force <stage>`:
base model, SFT, the seed's training, its generations), which is what a replication on another machine is; without
it only the stage itself reruns, on the committed inputs.

"Identical" holds on the same *kind* of CPU only (hardware.cpu_kind: AVX2 and AVX-512 kernels sum in another order,
and `mixed_precision: auto` runs PPO in bf16 only on CPUs with native bf16). Every metrics file records the kind
(and PPO its precision) under `platform`. When the committed metrics came from another kind, the check says so and
compares each headline metric that carries a confidence interval ({value, ci_low, ci_high}) instead: the rerun's
value must lie inside the committed interval. A stage without such metrics (a training stage) cannot be compared
across kinds; the check says so and points at the evaluation of its model.

The rerun replaces the stage's outputs in the workspace, as `dvc repro --force` does. Where everything matched,
the stage's git-tracked outputs (metrics, plots: they differ from the committed ones only in wall-clock numbers)
are checked out from HEAD again and `dvc commit` records them, so `dvc status` is clean and downstream stages do
not rerun; otherwise the rerun's outputs stay for inspection and `git checkout <metrics files> dvc.lock &&
dvc checkout` restores the committed state.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from detoxrl import DetoxError, hardware


def venv_env() -> dict:
    """The environment with this interpreter's bin dir first on PATH, so `dvc` and the stages' `detoxrl` commands
    are this venv's even when the command was started as .venv/bin/detoxrl without activating it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


# Keys that measure wall-clock time, not a result of the stage (a model card's budget.seconds among them).
WALL_CLOCK = re.compile(r"(^|\.)(time_[^.]*|[^.]*_runtime|[^.]*_per_second|[^.]*_seconds|[^.]*_time_s|seconds)$")


@dataclass
class Comparison:
    compared: int = 0
    ignored: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)  # "file:key: committed -> rerun"
    max_rel_diff: float = 0.0
    mode: str = "exact"  # exact (same CPU kind) | ci (another kind: headline metrics within their CIs)
    ci_checked: int = 0  # ci mode: metrics compared with their committed confidence interval
    changed: int = 0  # ci mode: other values that differ (expected between kinds; not failures)

    @property
    def ok(self) -> bool:
        return not self.different


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: obj}


def compare_metrics(committed: dict, rerun: dict, rtol: float = 0.0, atol: float = 0.0, name: str = "",
                    result: Comparison | None = None) -> Comparison:
    """Compare two metrics documents key by key: numbers within atol + rtol * |committed|, the rest exactly."""
    result = result or Comparison()
    a, b = flatten(committed), flatten(rerun)
    for key in sorted(set(a) | set(b)):
        label = f"{name}:{key}" if name else key
        if WALL_CLOCK.search(key):
            result.ignored.append(label)
            continue
        if key not in a or key not in b:
            result.different.append(f"{label}: {'missing in rerun' if key in a else 'new in rerun'}")
            continue
        x, y = a[key], b[key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        result.compared += 1
        if numeric:
            if math.isnan(x) and math.isnan(y):
                continue
            diff = abs(x - y)
            if diff:
                result.max_rel_diff = max(result.max_rel_diff, diff / abs(x) if x else math.inf)
            if diff > atol + rtol * abs(x):
                result.different.append(f"{label}: {x!r} -> {y!r}")
        elif x != y:
            result.different.append(f"{label}: {x!r} -> {y!r}")
    return result


def compare_within_ci(committed: dict, rerun: dict, name: str = "", result: Comparison | None = None) -> Comparison:
    """Across CPU kinds: each committed {value, ci_low, ci_high} must hold the rerun's value; other values may
    differ."""
    result = result or Comparison(mode="ci")
    result.mode = "ci"

    def walk(a, b, key):
        if isinstance(a, dict) and {"value", "ci_low", "ci_high"} <= set(a):
            label = f"{name}:{key}" if name else key
            value = b.get("value") if isinstance(b, dict) else None
            result.ci_checked += 1
            if not isinstance(value, (int, float)) or not a["ci_low"] <= value <= a["ci_high"]:
                result.different.append(f"{label}: {value!r} outside the committed "
                                        f"{a['value']:.4g} [{a['ci_low']:.4g}, {a['ci_high']:.4g}]")
        elif isinstance(a, dict):
            for k, v in a.items():
                if k != "platform":
                    walk(v, b.get(k) if isinstance(b, dict) else None, f"{key}.{k}" if key else str(k))

    walk(committed, rerun, "")
    plain = compare_metrics({k: v for k, v in committed.items() if k != "platform"},
                            {k: v for k, v in rerun.items() if k != "platform"})
    result.changed += len(plain.different)
    result.compared += plain.compared
    return result


SEED_RUN = re.compile(r"^(?:metrics/eval|experiments/results)/(?P<method>[^/]+)/s(?P<seed>\d+)\.json$")
HEADLINE = ("expected_max_toxicity", "toxicity_probability", "mean_toxicity")


def compare_with_seed_spread(one_run: dict, rerun: dict, name: str, result: Comparison) -> Comparison:
    """Another CPU kind, one seed of a seeded method: each rerun headline value (overall) must lie inside the
    method's committed one-run interval (the spread of a single training run over seeds and prompts)."""
    result.mode = "seeds"
    for metric in HEADLINE:
        spread = one_run[metric]
        value = rerun.get("toxicity", {}).get("overall", {}).get(metric, {}).get("value")
        result.ci_checked += 1
        if not isinstance(value, (int, float)) or not spread["ci_low"] <= value <= spread["ci_high"]:
            result.different.append(f"{name}:{metric}: {value!r} outside the committed spread of one run "
                                    f"{spread['value']:.4g} [{spread['ci_low']:.4g}, {spread['ci_high']:.4g}]")
    return result


def recorded_kind(doc: dict) -> str | None:
    """The machine kind a metrics document records (`platform`), or None for documents written before it did."""
    plat = doc.get("platform")
    if not isinstance(plat, dict):
        return None
    return (f"{plat['device']}:{plat.get('gpu', '')}" if plat.get("device") not in (None, "cpu")
            else plat.get("cpu_kind"))


def current_kind() -> str:
    rec = hardware.platform_record(hardware.detect())
    return recorded_kind({"platform": rec})


def stage_outputs(stage: str, root: Path = Path(".")) -> tuple[list[str], list[str]]:
    """(metrics files, outputs kept in git: `cache: false`) a dvc.yaml stage declares (foreach items: `name@key`)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            outs = [out for st in repo.stage.collect(stage) for out in st.outs]
            rel = lambda out: str(Path(out.fs_path).relative_to(Path(repo.root_dir).resolve()))  # noqa: E731
            metrics = [rel(out) for out in outs if out.metric]
            in_git = [rel(out) for out in outs if not out.use_cache]
    except DvcException as exc:
        raise DetoxError(f"{stage}: {exc}") from None
    if not metrics:
        raise DetoxError(f"stage {stage} declares no metrics files: nothing to compare")
    return metrics, in_git


def restore_committed(stage: str, paths: list[str], root: Path) -> None:
    """Put back the committed versions of a stage's git-tracked outputs and record them in dvc.lock."""
    for cmd in (["git", "checkout", "HEAD", "--", *paths], ["dvc", "commit", "--force", stage]):
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=venv_env())
        if proc.returncode != 0:
            raise DetoxError(f"{' '.join(cmd[:2])} failed after the rerun of {stage}: {proc.stderr.strip()[:300]}")


def committed_json(path: str, rev: str, root: Path) -> dict:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DetoxError(f"{path} is not committed at {rev}: run the stage and commit its metrics first")
    return json.loads(proc.stdout)


def check_repro(stage: str, rev: str = "HEAD", rtol: float = 0.0, atol: float = 0.0, root: Path = Path("."),
                echo=print, upstream: bool = False) -> Comparison:
    paths, in_git = stage_outputs(stage, root)
    committed = {p: committed_json(p, rev, root) for p in paths}
    kinds = {recorded_kind(doc) for doc in committed.values()}
    here = current_kind()
    same_kind = kinds == {here}
    precisions = {doc["platform"]["precision"] for doc in committed.values() if "precision" in doc.get("platform", {})}
    if precisions:
        echo(f"committed precision: {', '.join(sorted(precisions))} (the rerun resolves its own; see its platform)")
    if not same_kind:
        were = ", ".join(sorted(k or "an unrecorded kind" for k in kinds))
        echo(f"the committed metrics come from {were}, this machine is {here}: numbers are identical only on the same "
             "kind, so the headline metrics are compared with their confidence intervals instead (one seed of a seeded "
             "method: with the spread of one run over seeds)")
    cmd = ["dvc", "repro", "--force", stage] if upstream else ["dvc", "repro", "--force", "--single-item", stage]
    echo(f"rerunning {stage}{' and its upstream' if upstream else ''} ({' '.join(cmd)}); comparing "
         f"{', '.join(paths)} with {rev}")
    proc = subprocess.run(cmd, cwd=root, env=venv_env())
    if proc.returncode != 0:
        raise DetoxError(f"dvc repro of {stage} failed (exit {proc.returncode})")
    result = Comparison(mode="exact" if same_kind else "ci")
    summary = None
    for p in paths:
        rerun = json.loads((root / p).read_text())
        seed_run = SEED_RUN.match(p)
        if same_kind:
            compare_metrics(committed[p], rerun, rtol, atol, p, result)
            continue
        if seed_run:
            summary = summary or committed_json("metrics/summary.json", rev, root)
            one_run = summary.get("models", {}).get(seed_run["method"], {}).get("one_run")
            if one_run:
                compare_with_seed_spread(one_run, rerun, p, result)
                continue
        compare_within_ci(committed[p], rerun, p, result)
    if result.ok and result.mode == "exact":
        restore_committed(stage, in_git, root)
    return result
