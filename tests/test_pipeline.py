"""End to end: the real `dvc pull` + `dvc repro` on the smoke profile, in a temporary copy of the repo."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, cli_env

COPY = ["dvc.yaml", "params.yaml", "profiles", "src", ".dvc/config", ".dvcignore", ".gitignore", "data/raw"]


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    for rel in COPY:
        src, dst = ROOT / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl", "*.gz"))
        else:
            shutil.copy(src, dst)
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", repo)
    # The team remote, as a teammate's clone sees it; --local keeps the absolute path out of git.
    run(["dvc", "remote", "modify", "--local", "team", "url", str(SHARED / "dvc-remote")], repo)
    run(["dvc", "pull", "-q", "-R", "data/raw"], repo)
    run(["detoxrl", "use-profile", "profiles/smoke.yaml"], repo)
    return repo


@pytest.mark.slow
def test_smoke_pipeline_runs_caches_and_reruns_only_what_changed(repo):
    out = run(["dvc", "repro"], repo)
    for stage in ("base_model", "prepare", "sft", "dpo", "ppo", "pref_eval", "generate@base", "generate@sft",
                  "generate@dpo", "generate@ppo", "evaluate@base", "evaluate@sft", "evaluate@dpo", "evaluate@ppo",
                  "validate_judges", "report"):
        assert f"Running stage '{stage}'" in out
    for name in ("pref_train", "pref_val", "pref_test", "sft", "eval_prompts", "ppo_prompts"):
        assert (repo / "data" / "processed" / f"{name}.jsonl").stat().st_size > 0
    assert (repo / "models" / "base" / "model.safetensors").exists()
    assert (repo / "metrics" / "data.json").exists() and (repo / "dvc.lock").exists()
    assert len((repo / "data" / "generations" / "base.jsonl").read_text().splitlines()) == 10 * 2  # smoke: 10 prompts, k=2
    ev = json.loads((repo / "metrics" / "eval" / "base.json").read_text())
    assert ev["n_prompts"] == 10 and 0 <= ev["toxicity"]["overall"]["expected_max_toxicity"]["value"] <= 1
    judges = json.loads((repo / "metrics" / "judges.json").read_text())["judges"]
    assert judges["offline"]["auroc"] > 0.7 and "skipped" in judges["openai"] and "skipped" in judges["detoxify"]
    report_md = (repo / "reports" / "report.md").read_text()
    assert "| base |" in report_md
    assert "| ppo |" in report_md and "offline ⚠ (the headline judge" in report_md  # PPO trained on that judge
    assert json.loads((repo / "metrics" / "ppo.json").read_text())["judges_in_reward"] == ["offline"]
    # SFT and DPO: models, metrics, training curves; checkpoints gone once the stages succeeded.
    assert (repo / "models" / "sft" / "adapter_config.json").exists()
    assert (repo / "models" / "dpo" / "model.safetensors").exists()
    assert json.loads((repo / "metrics" / "sft.json").read_text())["steps"] == 2
    dpo = json.loads((repo / "metrics" / "dpo.json").read_text())
    assert dpo["steps"] == 2 and "rewards/accuracies" in dpo["validation"]
    pref = json.loads((repo / "metrics" / "pref_accuracy.json").read_text())
    assert set(pref["loglik_accuracy"]) == {"base", "sft", "dpo"} and "dpo_reward_accuracy" in pref
    assert (repo / "plots" / "dpo" / "plots" / "metrics" / "eval" / "rewards" / "margins.tsv").exists()
    assert not (repo / ".cache" / "checkpoints" / "sft").exists() and not (repo / "plots" / "sft" / "dvc.yaml").exists()
    assert set(json.loads((repo / "metrics" / "summary.json").read_text())["vs_baseline"]) == {"sft", "dpo", "ppo"}
    plots = run(["dvc", "plots", "show", "--json"], repo)
    assert "plots/sft/plots/metrics/train/loss.tsv" in plots and "plots/dpo/plots/metrics/train/grad_norm.tsv" in plots
    assert "plots/ppo/plots/metrics/objective/kl.tsv" in plots
    shown = run(["dvc", "metrics", "show"], repo)
    assert "eval_prompts" in shown and "expected_max_toxicity" in shown
    assert "metrics/dpo.json" in shown and "rewards/accuracies" in shown and "loglik_accuracy" in shown

    # Nothing changed: nothing reruns.
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again
    assert "up to date" in run(["dvc", "status"], repo)

    # A prepare param changes: prepare reruns, base_model does not.
    run(["dvc", "exp", "run", "-S", "prepare.rtp.eval_nontoxic=3"], repo)
    params_out = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo)
    assert "eval_prompts_by_subset.nontoxic" in params_out
    assert "Running stage" not in run(["dvc", "repro"], repo)  # the experiment was applied to the workspace


@pytest.mark.slow
def test_changed_prepare_param_reruns_prepare_only(repo):
    run(["dvc", "repro"], repo)
    text = (repo / "params.yaml").read_text().replace("seed: 42", "seed: 43", 1)
    (repo / "params.yaml").write_text(text)
    out = run(["dvc", "repro"], repo)
    assert "Running stage 'prepare'" in out
    assert "Running stage 'base_model'" not in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("prepare.seeed=3", "Could not override 'prepare.seeed'"),  # DVC itself refuses a new key
        ("+prepare.seeed=3", "prepare.seeed: unknown key"),  # forced in: the schema refuses it
        ("prepare.seed=abc", "prepare.seed: Input should be a valid integer"),
    ],
)
def test_bad_param_fails_loudly(repo, override, message):
    run(["dvc", "repro"], repo)
    before = (repo / "params.yaml").read_text()
    proc = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (repo / "params.yaml").write_text(before)  # a failed `dvc exp run` leaves its change in the workspace
