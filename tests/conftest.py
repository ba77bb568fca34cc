from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAW = ROOT / "data" / "raw"


def cli_env() -> dict:
    """Environment for subprocesses: the venv's bin first, so `detoxrl` and `dvc` resolve."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The real packaged SmolLM2 GGUF materialised once per test session (about 20 s)."""
    from detoxrl.models.base import materialise_base_model
    from detoxrl.params import BaseModelParams

    out = tmp_path_factory.mktemp("base") / "base"
    materialise_base_model(
        BaseModelParams(source="packaged:smollm2-135m-instruct", revision=None, dtype="float32",
                        trust_remote_code=False),
        out,
    )
    return out


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    if not (RAW / "hh-rlhf" / "harmless-base-test.jsonl.gz").exists():
        pytest.fail("raw data missing: run `make setup` (it runs `dvc pull data/raw`)")
    return RAW
