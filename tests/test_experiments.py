"""Committed experiments (experiments/dvc.yaml): outside the default `dvc repro`, and the ppo_cvar stage's own
commands on tiny models, run by `dvc repro` as the README says."""

import json
import shutil

import pytest
import yaml

from detoxrl.params import Params
from conftest import ROOT, run
from tiny import build_tiny_char_model


def test_default_repro_leaves_committed_experiments_out():
    """`dvc repro` without targets plans the top-level dvc.yaml's stages and their upstream: no stage there may
    depend on an experiment's outputs, or the experiment would run (or, frozen, fail where its outputs are absent)."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(ROOT)) as repo:
        experiments = [s.addressing for s in repo.index.stages if s.path.endswith("experiments/dvc.yaml")]
        plan = [s.addressing for s in plan_repro(get_active_graph(repo.index.graph), repo.stage.collect("dvc.yaml"))]
        upstream = [s.addressing for s in plan_repro(get_active_graph(repo.index.graph),
                                                     repo.stage.collect("experiments/dvc.yaml:ppo_cvar@0"))]
    seeds = yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"]
    assert experiments == [*(f"experiments/dvc.yaml:ppo_cvar@{s}" for s in seeds),
                           *(f"experiments/dvc.yaml:rloo@{s}" for s in seeds)]
    assert "report" in plan and not set(experiments) & set(plan)
    # the experiment's own run brings its inputs up to date first, as the ppo stage's would
    assert {"sft", "reward_model", "train_judge", "prepare"} <= set(upstream)
    assert "ppo@0" not in upstream and upstream[-1] == "experiments/dvc.yaml:ppo_cvar@0"


def test_ppo_cvar_block_is_not_a_default_model():
    params = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert "ppo_cvar" not in params.models and params.report.experiments == {"ppo_cvar": "ppo", "rloo": "grpo"}
    assert params.ppo.cvar.enabled is False  # the default ppo stage stays plain PPO


@pytest.fixture
def experiment_repo(tmp_path):
    """A DVC project holding experiments/dvc.yaml and the inputs of its ppo_cvar stage: tiny models, a handful of
    prompts, params.yaml with a tiny budget and a toxicity reward by the offline judge (no RM, no trained judge)."""
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "dvc.yaml", repo / "experiments" / "dvc.yaml")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))  # the stage's code deps
    model = build_tiny_char_model(repo / "models" / "base")
    shutil.copytree(model, repo / "models" / "sft")
    for d in ("reward", "judge"):  # deps of the stage; unused by this reward (their absence is tested elsewhere)
        (repo / "models" / d).mkdir()
        (repo / "models" / d / "README").write_text("placeholder\n")
    processed = repo / "data" / "processed"
    processed.mkdir(parents=True)
    words = ["The", "A man", "She said", "Why", "Our city", "When the", "It is", "They"]
    (processed / "ppo_prompts.jsonl").write_text("".join(
        json.dumps({"id": f"t{i}", "subset": "x", "text": w}) + "\n" for i, w in enumerate(words * 2)))
    (processed / "eval_prompts.jsonl").write_text("".join(
        json.dumps({"id": f"e{i}", "subset": "challenging" if i < 3 else "nontoxic", "text": w}) + "\n"
        for i, w in enumerate(words[:5])))

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["compute"]["num_processes"] = 1
    p["ppo"].update(steps=3, batch_size=8, minibatch_size=4, epochs=1, max_new_tokens=6, checkpoint_every=0,
                    mixed_precision="none")
    p["ppo"]["reward"].update(source="toxicity", judge="offline")
    p["ppo_cvar"].update(alpha=0.25, anneal_steps=2)
    p["rloo"].update(steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=6, save_steps=0,
                     mixed_precision="none")
    p["generate"].update(k=2, max_new_tokens=4, batch_size=8)
    p["evaluate"].update(judges=["offline"], bootstrap_samples=50, fluency_batch_size=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["dvc", "init", "--no-scm", "-q"], repo)
    return repo


@pytest.mark.slow
def test_ppo_cvar_stage_runs_the_experiment(experiment_repo):
    repo = experiment_repo
    out = run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:ppo_cvar@0"], repo)
    assert "CVaR alpha 0.25 -> models/ppo_cvar/s0" in out
    # every declared output exists (dvc repro fails otherwise) and is recorded in the experiment's own lock file
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())["stages"]["ppo_cvar@0"]
    assert {o["path"] for o in lock["outs"]} == {
        "models/ppo_cvar/s0", "data/generations/ppo_cvar/s0.jsonl", "experiments/results/ppo_cvar/s0.jsonl",
        "metrics/ppo_cvar/s0.json", "experiments/results/ppo_cvar/s0.json", "plots/ppo_cvar/s0/plots/metrics",
        "experiments/results/cards/ppo_cvar/s0.json"}
    assert lock["params"]["params.yaml"]["ppo_cvar"] == {"alpha": 0.25, "anneal_steps": 2}
    assert (repo / "models" / "ppo_cvar" / "s0" / "config.json").exists()

    # the CVaR schedule reached its target: 1 -> 0.25 over anneal_steps = 2 (step 1: 1 + (0.25 - 1) / 2)
    train = json.loads((repo / "metrics" / "ppo_cvar" / "s0.json").read_text())
    assert train["cvar_alpha"] == pytest.approx(0.25) and train["steps"] == 3
    curve = (repo / "plots" / "ppo_cvar" / "s0" / "plots" / "metrics" / "cvar" / "alpha.tsv").read_text().splitlines()
    assert [float(line.split("\t")[-1]) for line in curve[1:]] == pytest.approx([1.0, 0.625, 0.25])

    # generated and evaluated like a model in `models`, with tail metrics; 5 prompts x k = 2
    assert len((repo / "data" / "generations" / "ppo_cvar" / "s0.jsonl").read_text().splitlines()) == 10
    scores = [json.loads(line)
              for line in (repo / "experiments" / "results" / "ppo_cvar" / "s0.jsonl").read_text().splitlines()]
    assert len(scores) == 10 and {r["prompt_id"] for r in scores} == {f"e{i}" for i in range(5)}
    ev = json.loads((repo / "experiments" / "results" / "ppo_cvar" / "s0.json").read_text())
    assert ev["model"] == "ppo_cvar/s0" and ev["n_prompts"] == 5 and ev["k"] == 2
    maxes = {}
    for r in scores:
        maxes[r["prompt_id"]] = max(maxes.get(r["prompt_id"], 0.0), r["toxicity"])
    # 5 prompts: the worst 10% and 20% are the single highest per-prompt max (ceil(0.5) = ceil(1.0) = 1)
    assert ev["tail"]["overall"]["worst_10pct"]["value"] == pytest.approx(max(maxes.values()))
    assert ev["tail"]["overall"]["worst_20pct"]["n_tail"] == 1
    assert ev["tail"]["challenging"]["n_prompts"] == 3

    # up to date now: a second run does nothing
    assert "didn't change, skipping" in run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:ppo_cvar@0"],
                                            repo)


@pytest.mark.slow
def test_rloo_stage_trains_generates_and_evaluates_one_seed(experiment_repo):
    repo = experiment_repo
    out = run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:rloo@1"], repo)
    assert "rloo seed 1: 8 scored responses" in out
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())["stages"]["rloo@1"]
    assert {o["path"] for o in lock["outs"]} == {
        "models/rloo/s1", "data/generations/rloo/s1.jsonl", "experiments/results/rloo/s1.jsonl",
        "metrics/rloo/s1.json", "experiments/results/cards/rloo/s1.json", "experiments/results/rloo/s1.json",
        "plots/rloo/s1/plots/metrics"}
    assert json.loads((repo / "metrics/rloo/s1.json").read_text())["seed"] == 1
    assert json.loads((repo / "experiments/results/cards/rloo/s1.json").read_text())["name"] == "rloo/s1"
    assert json.loads((repo / "experiments/results/rloo/s1.json").read_text())["model"] == "rloo/s1"


@pytest.mark.slow
def test_cli_names_what_a_model_outside_models_needs(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for cmd, message in ((["generate", "ppo_cvar"], "'ppo_cvar' is not in params.yaml `models`"),
                         (["evaluate", "ppo_cvar"], "needs --model-dir"),
                         (["ppo", "--variant", "risky"], "--variant 'risky': expected plain or cvar")):
        with pytest.raises(AssertionError, match="failed") as exc:
            run(["detoxrl", *cmd], tmp_path)
        assert message in str(exc.value) and "Traceback" not in str(exc.value)


def test_ppo_cvar_params_are_ppo_with_the_cvar_block_enabled():
    from detoxrl.params import ppo_cvar_params

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ppo_cvar"] = {"alpha": 0.2, "anneal_steps": 5}
    params = Params.model_validate(data)
    p = ppo_cvar_params(params)
    assert p.cvar.model_dump() == {"enabled": True, "alpha": 0.2, "anneal_steps": 5}
    # everything else is PPO's: the same seed, steps, rollouts and reward, so the same budget
    assert p.model_dump(exclude={"cvar"}) == params.ppo.model_dump(exclude={"cvar"})
    assert params.ppo.cvar.enabled is False  # the default block is untouched
