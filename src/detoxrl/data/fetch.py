"""Rebuild the raw files from their public sources, for users without access to the team remote.

Each raw file's expected md5 comes from its DVC pointer (data/raw/**/<file>.dvc), its URL from
params `raw_data.sources`. A file is downloaded to a temp file, verified, then renamed into place:
a failed download or a wrong md5 leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .. import DetoxError
from ..io import atomic_file


def pointer_md5(pointer: Path) -> str:
    try:
        meta = yaml.safe_load(pointer.read_text())
        return meta["outs"][0]["md5"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        raise DetoxError(f"{pointer}: not a readable DVC pointer file with outs[0].md5") from None


def fetch_raw(project_dir: str | Path, sources: dict[str, str | None], only: list[str] | None = None,
              timeout: float = 60.0) -> list[str]:
    project_dir = Path(project_dir)
    fetched = []
    for rel, url in sources.items():
        if only and rel not in only:
            continue
        if url is None:  # no public file reproduces it byte for byte (the CLI says so for each)
            if only:
                raise DetoxError(f"{rel}: no public source reproduces this file byte for byte (raw_data.sources "
                                 "is null); `dvc pull` it from a remote that holds it")
            continue
        target = project_dir / rel
        expected = pointer_md5(target.with_name(target.name + ".dvc"))
        md5 = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_file(target, "wb") as out:
                while block := resp.read(1 << 20):
                    md5.update(block)
                    out.write(block)
                if md5.hexdigest() != expected:
                    raise DetoxError(f"{rel}: md5 {md5.hexdigest()} of {url} does not match {expected} "
                                     "in its .dvc pointer")
        except (urllib.error.URLError, OSError) as exc:
            raise DetoxError(f"{rel}: cannot download {url} ({getattr(exc, 'reason', exc)})") from None
        fetched.append(rel)
    return fetched
