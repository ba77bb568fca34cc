"""benchmarks/gpu_check.py, the script a lent GPU runs, in its --smoke mode on this CPU: every part runs through the
stages' own code and reports its numbers (the GPU-only parts say why they were skipped)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_in_smoke_mode(base_model_dir, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**cli_env(), "PYTHONPATH": str(ROOT / "benchmarks")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--tokenizer",
                           str(base_model_dir), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["model"] == "qwen2-1.5b" and r["parameters"] > 0 and r["matmul_peak_tflops"] > 0
    g = r["generation"]
    assert g["rows"] == 32 and g["tokens_per_s"] > 0 and 0 < g["of_hbm_limit"] < 1 and g["vs_model_generate"] > 0
    assert all(r["training"][s]["tokens_per_s"] > 0 for s in ("sft", "dpo"))
    assert r["ppo"]["samples_per_s"] > 0 and r["ppo"]["precision"] in {"bf16", "none"}
    assert r["qlora_4bit"] == {"skipped": "no CUDA"}
