"""A SQLite cache of judge scores, and `score_texts`, which scores through it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Judge

_CHUNK = 500  # keys per SELECT, well under SQLite's bound-variable limit


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ScoreCache:
    """Scores keyed by (judge name, judge version, sha256 of the text), in `<cache_dir>/scores.sqlite`."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / "scores.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Parallel DVC stages may share the file: WAL lets readers and one writer coexist.
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (judge TEXT NOT NULL, version TEXT NOT NULL,"
            " text_sha256 TEXT NOT NULL, scores TEXT NOT NULL,"
            " PRIMARY KEY (judge, version, text_sha256)) WITHOUT ROWID"
        )
        self._db.commit()

    def get(self, judge: str, version: str, hashes: list[str]) -> dict[str, dict[str, float]]:
        """The cached scores among `hashes`, keyed by hash (misses are absent)."""
        found: dict[str, dict[str, float]] = {}
        for i in range(0, len(hashes), _CHUNK):
            chunk = hashes[i : i + _CHUNK]
            rows = self._db.execute(
                "SELECT text_sha256, scores FROM scores WHERE judge = ? AND version = ?"
                f" AND text_sha256 IN ({','.join('?' * len(chunk))})",
                [judge, version, *chunk],
            )
            found.update((h, json.loads(s)) for h, s in rows)
        return found

    def put(self, judge: str, version: str, items: Iterable[tuple[str, dict[str, float]]]) -> None:
        """Store (hash, scores) pairs, replacing any previous entry."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                [(judge, version, h, json.dumps(s, sort_keys=True)) for h, s in items],
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def score_texts(
    judge: Judge,
    texts: list[str],
    cache: ScoreCache | None,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Score `texts` in input order: each distinct text once, cache hits without calling the judge.

    Misses go to the judge `batch_size` texts at a time (default: the judge's own `batch_size`,
    else 256) and are stored after each batch, so an interrupted run keeps what it scored.
    """
    hashes = [text_sha256(t) for t in texts]
    unique = dict(zip(hashes, texts))  # first occurrence of each distinct text, in order
    scores = cache.get(judge.name, judge.version, list(unique)) if cache is not None else {}
    misses = [h for h in unique if h not in scores]
    size = batch_size or getattr(judge, "batch_size", None) or 256
    bar = None
    if progress and misses:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(misses), desc=f"scoring ({judge.name})", unit="text", file=sys.stderr)
    for i in range(0, len(misses), size):
        batch = misses[i : i + size]
        results = judge.score([unique[h] for h in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"{judge.name} judge returned {len(results)} scores for {len(batch)} texts")
        new = {h: {k: float(v) for k, v in r.items()} for h, r in zip(batch, results)}
        if cache is not None:
            cache.put(judge.name, judge.version, new.items())
        scores.update(new)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return [dict(scores[h]) for h in hashes]
