"""`detoxrl pull-raw`: `dvc pull` of data/raw from the default DVC remote, explained when it cannot work.

DVC's own message for an unreachable local remote is "Checkout failed ... Is your cache up to date?", which does
not say that the remote was not there, nor what to do instead. This command says what it tried (the remote's name
and resolved URL) and the two ways on, in two lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .. import DetoxError

TARGET = "data/raw"


def default_remote(root: Path) -> tuple[str | None, str | None]:
    """(name, URL) of the repo's default DVC remote, relative paths resolved as DVC resolves them."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        url = repo.config["remote"].get(name, {}).get("url") if name else None
    return name, url


def ways_on(tried: str) -> str:
    return (f"{TARGET}: {tried}.\nWays on: `detoxrl fetch-raw` rebuilds the raw files from their public sources "
            "(needs the network; md5-checked), or `dvc remote add -d <name> <url>` for a remote holding them, "
            f"then `dvc pull -R {TARGET}`.")


def pull_raw(root: Path = Path(".")) -> str:
    """Pull data/raw; returns what was done. Raises DetoxError with the explanation when it cannot."""
    name, url = default_remote(root)
    if not name or not url:
        raise DetoxError(ways_on("no default DVC remote is configured (.dvc/config core.remote)"))
    where = f"the DVC remote '{name}' ({url})"
    if "://" not in url and not Path(url).is_dir():
        raise DetoxError(ways_on(f"{where} was not found"))
    bin_dir = str(Path(sys.executable).parent)  # this venv's dvc, activated or not
    proc = subprocess.run(["dvc", "pull", "--quiet", "-R", TARGET], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("ERROR")]
        reason = lines[0].removeprefix("ERROR: ") if lines else f"dvc pull exited {proc.returncode}"
        raise DetoxError(ways_on(f"could not pull from {where}: {reason}"))
    return f"{TARGET}: pulled from {where}"
