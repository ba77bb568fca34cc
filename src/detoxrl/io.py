"""Small file helpers: JSON Lines and atomic writes (temp file/dir, then rename)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import DetoxError


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a (optionally gzipped) JSON Lines file; any defect names the file and line."""
    path = Path(path)
    if not path.exists():
        raise DetoxError(f"{path}: file not found (run `dvc pull` or `detoxrl fetch-raw`)")
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DetoxError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DetoxError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                records.append(record)
    except (EOFError, gzip.BadGzipFile, OSError, UnicodeDecodeError) as exc:
        raise DetoxError(f"{path}: corrupt or truncated file ({exc})") from None
    return records


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` whole.

    On any exception the temporary directory is removed and `target` is left as it was, so DVC
    never sees (or caches) a half-written output.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the output should read like any directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file next to `target` and rename it over `target` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; outputs should read like any file
    os.replace(tmp, target)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    n = 0
    with atomic_file(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")
