"""Human preference labels: the pairs people judge, the labels file, and Label Studio's JSON formats.

A *task* is one prompt with two texts, `a` and `b`, and a `sha` of the three (a label given to other texts is
stale, kept in the file and never used). A *label* is one answer, one JSON line:

    {"pair_id": ..., "sha": ..., "mode": "pairs" | "eval", "choice": "a" | "b" | "tie" | "skip",
     "left": "a" | "b", "annotator": ..., "time": ISO 8601 UTC, "source": "page" | "label-studio"}

`choice` names the text, never the side of the screen (`left` records which text was shown on the left, so
position bias can be measured). Labels are data: the file is only ever appended to, each append rewrites the
file through a temporary file and an atomic rename (a crash leaves the old file or the new one, never half of a
line), and a record that is malformed or repeats an (annotator, mode, pair) already answered is refused with one
line naming the file, line or task.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from pathlib import Path

from .. import DetoxError
from ..io import atomic_file

LABELS_DIR = Path("data/labels")
LABEL_FILES = {"pairs": LABELS_DIR / "human.jsonl", "eval": LABELS_DIR / "human_eval.jsonl"}
CHOICES = ("a", "b", "tie", "skip")
KEYS = {"pair_id", "sha", "mode", "choice", "left", "annotator", "time", "source"}
LS_FROM_NAME = "comparison"  # the Pairwise control of the Label Studio config below
LABEL_STUDIO_CONFIG = """<View>
  <Header value="Content warning: offensive text. Which continuation is less toxic?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="comparison" toName="answer1,answer2"/>
  <View style="display: flex; gap: 1em;">
    <Text name="answer1" value="$answer1"/>
    <Text name="answer2" value="$answer2"/>
  </View>
</View>"""


def task_sha(prompt: str, a: str, b: str) -> str:
    return hashlib.sha256(json.dumps([prompt, a, b]).encode()).hexdigest()[:16]


def make_task(pair_id: str, prompt: str, a: str, b: str, **meta) -> dict:
    return {"pair_id": pair_id, "prompt": prompt, "a": a, "b": b, "sha": task_sha(prompt, a, b), **meta}


def pool_tasks(pool: list[dict]) -> list[dict]:
    """The human pool of pref_gen (prompt + n >= 2 responses): the first two responses of each prompt."""
    return [make_task(r["id"], r["prompt"], r["responses"][0], r["responses"][1]) for r in pool]


def validate_label(label: object, where: str, mode: str | None = None) -> dict:
    """One label record, checked; DetoxError naming `where` and the defect otherwise."""
    if not isinstance(label, dict):
        raise DetoxError(f"{where}: a label must be a JSON object, got {type(label).__name__}")
    missing, extra = KEYS - set(label), set(label) - KEYS
    if missing or extra:
        raise DetoxError(f"{where}: " + "; ".join(
            ([f"missing key(s) {sorted(missing)}"] if missing else [])
            + ([f"unknown key(s) {sorted(extra)}"] if extra else [])))
    for key in ("pair_id", "sha", "annotator", "time", "source"):
        if not isinstance(label[key], str) or not label[key].strip():
            raise DetoxError(f"{where}: '{key}' must be a non-empty string, got {label[key]!r}")
    if label["choice"] not in CHOICES:
        raise DetoxError(f"{where}: 'choice' must be one of {list(CHOICES)}, got {label['choice']!r}")
    if label["left"] not in ("a", "b"):
        raise DetoxError(f"{where}: 'left' must be 'a' or 'b', got {label['left']!r}")
    if label["mode"] not in LABEL_FILES or (mode and label["mode"] != mode):
        raise DetoxError(f"{where}: 'mode' must be {mode or ' or '.join(LABEL_FILES)!r}, got {label['mode']!r}")
    try:
        dt.datetime.fromisoformat(label["time"])
    except ValueError:
        raise DetoxError(f"{where}: 'time' must be an ISO 8601 time, got {label['time']!r}") from None
    return label


def read_labels(path: str | Path, mode: str | None = None) -> list[dict]:
    """Every label of a labels file (none if it does not exist), each checked, no (annotator, mode, pair) twice."""
    path = Path(path)
    if not path.exists():
        return []
    labels, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DetoxError(f"{where}: not valid JSON ({exc.msg})") from None
        label = validate_label(record, where, mode)
        key = (label["annotator"], label["mode"], label["pair_id"])
        if key in seen:
            raise DetoxError(f"{where}: annotator {key[0]!r} already labelled pair {key[2]!r} at line {seen[key]}")
        seen[key] = lineno
        labels.append(label)
    return labels


class LabelStore:
    """The labels file of one mode, appended to atomically; safe across the threads of the labelling server."""

    def __init__(self, path: str | Path, mode: str, tasks: list[dict]):
        self.path, self.mode = Path(path), mode
        self.tasks = {t["pair_id"]: t for t in tasks}
        self._lock = threading.Lock()
        self.labels = read_labels(self.path, mode)

    def answered(self, annotator: str) -> set[str]:
        return {x["pair_id"] for x in self.labels if x["annotator"] == annotator}

    def next_task(self, annotator: str) -> dict | None:
        """The first task, in file order, this annotator has not answered (resume after a crash or reload)."""
        done = self.answered(annotator)
        return next((t for pid, t in self.tasks.items() if pid not in done), None)

    def progress(self, annotator: str) -> dict:
        return {"done": len(self.answered(annotator) & set(self.tasks)), "total": len(self.tasks)}

    def add(self, pair_id: str, sha: str, choice: str, left: str, annotator: str, source: str = "page") -> dict:
        label = {"pair_id": pair_id, "sha": sha, "mode": self.mode, "choice": choice, "left": left,
                 "annotator": annotator, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "source": source}
        validate_label(label, "submission", self.mode)
        task = self.tasks.get(pair_id)
        if task is None:
            raise DetoxError(f"submission: no pair {pair_id!r} in the {self.mode} tasks")
        if sha != task["sha"]:
            raise DetoxError(f"submission: pair {pair_id!r} has other texts now (sha {sha} != {task['sha']}); reload")
        with self._lock:
            if pair_id in self.answered(annotator):
                raise DuplicateLabel(f"submission: annotator {annotator!r} already labelled pair {pair_id!r}")
            self._append([label])
            self.labels.append(label)
        return label

    def add_many(self, labels: list[dict]) -> None:
        """Append already-validated labels (an import) in one atomic write; refused whole on any duplicate."""
        with self._lock:
            seen = {(x["annotator"], x["pair_id"]) for x in self.labels}
            for x in labels:
                if (x["annotator"], x["pair_id"]) in seen:
                    raise DuplicateLabel(f"import: annotator {x['annotator']!r} already labelled pair {x['pair_id']!r}"
                                         f" in {self.path}")
                seen.add((x["annotator"], x["pair_id"]))
            self._append(labels)
            self.labels.extend(labels)

    def _append(self, labels: list[dict]) -> None:
        old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        with atomic_file(self.path) as fh:
            fh.write(old + "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in labels))
            fh.flush()
            os.fsync(fh.fileno())


class DuplicateLabel(DetoxError):
    pass


def label_studio_tasks(tasks: list[dict]) -> list[dict]:
    """Label Studio's JSON task format for the Pairwise config above (answer1 = a, answer2 = b)."""
    return [{"data": {"pair_id": t["pair_id"], "sha": t["sha"], "prompt": t["prompt"], "answer1": t["a"],
                      "answer2": t["b"]}} for t in tasks]


def import_label_studio(export: object, where: str, tasks: list[dict], mode: str) -> tuple[list[dict], dict]:
    """Label Studio's JSON export (a list of tasks with `annotations`) -> our label records, and counts.

    The Pairwise control's result is {"type": "pairwise", "value": {"selected": "left" | "right"}}, left being
    answer1 (= a). Cancelled (skipped) annotations become `skip` labels, so they are kept too."""
    known = {t["pair_id"]: t for t in tasks}
    if not isinstance(export, list):
        raise DetoxError(f"{where}: a Label Studio JSON export is a list of tasks, got {type(export).__name__}")
    labels, counts = [], {"tasks": len(export), "annotations": 0, "cancelled": 0}
    for i, task in enumerate(export):
        at = f"{where}: task {task.get('id', i) if isinstance(task, dict) else i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DetoxError(f"{at}: expected an object with 'data'")
        pair_id = task["data"].get("pair_id")
        if pair_id not in known:
            raise DetoxError(f"{at}: data.pair_id {pair_id!r} is not a {mode} task (export the tasks with "
                             "`detoxrl label-studio export`)")
        if task["data"].get("sha") != known[pair_id]["sha"]:
            raise DetoxError(f"{at}: pair {pair_id!r} was exported with other texts (sha differs): stale annotations")
        for ann in task.get("annotations") or []:
            who = ann.get("completed_by")
            annotator = str(who.get("email") or who.get("id")) if isinstance(who, dict) else str(who)
            counts["annotations"] += 1
            if ann.get("was_cancelled"):
                counts["cancelled"] += 1
                choice = "skip"
            else:
                picks = [r for r in ann.get("result") or [] if r.get("type") == "pairwise"]
                selected = picks[0].get("value", {}).get("selected") if len(picks) == 1 else None
                if selected not in ("left", "right"):
                    raise DetoxError(f"{at}: annotation {ann.get('id')}: expected one pairwise result with "
                                     f"value.selected 'left' or 'right', got {ann.get('result')!r}")
                choice = "a" if selected == "left" else "b"
            created = ann.get("created_at") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            label = {"pair_id": pair_id, "sha": known[pair_id]["sha"], "mode": mode, "choice": choice, "left": "a",
                     "annotator": f"label-studio:{annotator}", "time": created.replace("Z", "+00:00"),
                     "source": "label-studio"}
            labels.append(validate_label(label, f"{at}: annotation {ann.get('id')}", mode))
    return labels, counts
