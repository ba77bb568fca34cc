"""End to end: the real `dvc pull` + `dvc repro` on the smoke profile, in a temporary copy of the repo."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, cli_env


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(smoke_workspace) -> Path:
    """The session's smoke workspace (tests/conftest.py): pulled, smoke profile, `dvc repro` run and committed."""
    smoke_workspace.reset()
    return smoke_workspace.path


@pytest.mark.slow
def test_smoke_pipeline_runs_caches_and_reruns_only_what_changed(repo, smoke_workspace):
    """Every stage of the smoke profile ran (on the tiny stand-in base; tests/e2e/test_packaged.py runs the real one),
    wrote what it promises, and nothing reruns when nothing changed."""
    out = smoke_workspace.first_repro  # the `dvc repro` that built every stage
    prov = json.loads((repo / "models" / "base" / "provenance.json").read_text())
    assert prov["source"].startswith("local:") and prov["parameters"] < 5_000_000
    for stage in ("base_model", "prepare", "sft", "dpo", "reward_model", "eval_reward_model", "ppo@0", "ppo@1",
                  "pref_eval", "generate@base", "generate@sft", "generate@dpo", "generate_seeded@ppo-0",
                  "generate_seeded@ppo-1", "evaluate@base", "evaluate@sft", "evaluate@dpo", "evaluate_seeded@ppo-0",
                  "evaluate_seeded@ppo-1", "validate_judges", "train_judge", "report", "prepare_chat",
                  "train_chat_judge", "chat_eval@base", "chat_eval_seeded@ppo-1", "pref_gen", "label_ai",
                  "dpo_feedback@rlaif", "evaluate_seeded@dpo_rlaif-1", "human_pairs", "human_eval",
                  "filter@sft_filtered", "evaluate_filtered@sft_filtered"):
        assert f"Running stage '{stage}'" in out
    for name in ("pref_train", "pref_val", "pref_test", "sft", "eval_prompts", "ppo_prompts"):
        assert (repo / "data" / "processed" / f"{name}.jsonl").stat().st_size > 0
    assert (repo / "models" / "base" / "model.safetensors").exists()
    assert (repo / "metrics" / "data.json").exists() and (repo / "dvc.lock").exists()
    # smoke: 10 prompts, k=2
    assert len((repo / "data" / "generations" / "base.jsonl").read_text().splitlines()) == 10 * 2
    ev = json.loads((repo / "metrics" / "eval" / "base.json").read_text())
    assert ev["n_prompts"] == 10 and 0 <= ev["toxicity"]["overall"]["expected_max_toxicity"]["value"] <= 1
    judges = json.loads((repo / "metrics" / "judges.json").read_text())["judges"]
    assert judges["offline"]["auroc"] > 0.7 and "skipped" in judges["openai"] and "skipped" in judges["detoxify"]
    assert judges["perspective_distilled"]["auroc"] > 0.7 and judges["ensemble"]["calibrated"]
    judge_train = json.loads((repo / "metrics" / "judge_train.json").read_text())
    assert judge_train["data"]["training_records"] == 150 and judge_train["heldout"]["auroc"] > 0.7  # smoke cap
    assert ev["judge"]["calibrated"] and set(ev["by_judge"]) >= {"offline", "perspective_distilled", "ensemble"}
    assert (repo / "plots" / "judge_calibration.png").read_bytes()[:4] == b"\x89PNG"
    report_md = (repo / "reports" / "report.md").read_text()
    assert "| base |" in report_md
    assert "| ppo | 2 seeds: seeds x prompts |" in report_md  # smoke: seeds [0, 1]
    assert "⚠ (measures these numbers" not in report_md  # the reward's judge is not the headline judge
    assert "## Reward / judge overlap" in report_md and "| ppo | perspective_distilled | `offline` " in report_md
    assert "judge_calibration.png" in report_md
    for seed in (0, 1):  # each seed its own model, metrics and card
        ppo = json.loads((repo / "metrics" / "ppo" / f"s{seed}.json").read_text())
        assert ppo["judges_in_reward"] == ["perspective_distilled"] and ppo["reward_source"].startswith("composite:")
        card = json.loads((repo / "metrics" / "cards" / "ppo" / f"s{seed}.json").read_text())
        assert card["seed"] == seed and card["budget"]["scored_responses"] == 2 * 4  # smoke: 2 steps x 4
        assert (repo / "models" / "ppo" / f"s{seed}" / "model.safetensors").exists()
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    emt = summary["models"]["ppo"]["expected_max_toxicity"]
    per_seed = summary["models"]["ppo"]["per_seed"]["expected_max_toxicity"]
    assert len(per_seed) == 2 and abs(emt["value"] - sum(per_seed) / 2) < 1e-9 and emt["ci_low"] <= emt["ci_high"]
    assert summary["models"]["sft"]["interval"] == "1 run: prompts only"
    assert "## Difference to `sft`, by judge" in report_md and "## Reward model" in report_md
    # SFT and DPO: models, metrics, training curves; checkpoints gone once the stages succeeded.
    assert (repo / "models" / "sft" / "adapter_config.json").exists()
    assert (repo / "models" / "dpo" / "model.safetensors").exists()
    assert json.loads((repo / "metrics" / "sft.json").read_text())["steps"] == 2
    dpo = json.loads((repo / "metrics" / "dpo.json").read_text())
    assert dpo["steps"] == 2 and "rewards/accuracies" in dpo["validation"]
    pref = json.loads((repo / "metrics" / "pref_accuracy.json").read_text())
    assert set(pref["loglik_accuracy"]) == {"base", "sft", "dpo"} and "dpo_reward_accuracy" in pref
    assert (repo / "plots" / "dpo" / "plots" / "metrics" / "eval" / "rewards" / "margins.tsv").exists()
    # Reward model: trained (merged, loadable as a sequence classifier), evaluated on held-out pairs.
    assert (repo / "models" / "reward" / "detoxrl_reward.json").exists()
    assert json.loads((repo / "metrics" / "reward_train.json").read_text())["steps"] == 2
    rm = json.loads((repo / "metrics" / "reward_model.json").read_text())
    test_pairs = json.loads((repo / "metrics" / "data.json").read_text())["counts"]["pref_test"]
    assert (rm["pairs"] == min(6, test_pairs) and 0 <= rm["accuracy"]["value"] <= 1
            and rm["judge_agreement"]["judge"] == "offline")
    assert (repo / "plots" / "reward_model" / "rewards.png").exists()
    bench = rm["reward_bench"]["models/reward"]  # smoke: one pair per RewardBench subset
    assert bench["pairs"] == 23 and set(bench["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    # The chat domain: ToxicChat split, the chat judge, every model's answers, the judges against human labels.
    chat_data = json.loads((repo / "metrics" / "chat_data.json").read_text())
    assert chat_data["eval_prompts"]["selected"] == {"jailbreaking": 2, "toxic": 3, "nontoxic": 3}
    chat_judge = json.loads((repo / "metrics" / "chat_judge_train.json").read_text())
    assert chat_judge["data"]["texts"] == 300 and chat_judge["heldout"]["auroc"] > 0.7
    chat = json.loads((repo / "metrics" / "chat" / "ppo" / "s0.json").read_text())
    assert (chat["n_prompts"] == 8 and chat["judge"] == "chat_distilled"
            and chat["by_judge"]["chat_distilled"]["calibrated"])
    assert set(chat["refusal_rate"]) == {"overall", "toxic", "jailbreaking", "nontoxic"}
    tc = json.loads((repo / "metrics" / "judges.json").read_text())["toxicchat"]["judges"]
    assert tc["chat_distilled"]["n"] == 120 and tc["chat_distilled"]["auprc"] > tc["chat_distilled"]["positive_rate"]
    assert "## Chat domain: held-out ToxicChat user inputs" in report_md and "### RewardBench" in report_md
    assert "## Judge validation against human labels (ToxicChat)" in report_md
    assert not (repo / ".cache" / "checkpoints" / "sft").exists() and not (repo / "plots" / "sft" / "dvc.yaml").exists()
    assert set(json.loads((repo / "metrics" / "summary.json").read_text())["vs_baseline"]) == {
        "sft", "dpo", "ppo", "grpo", "dpo_rlaif", "sft_filtered"}  # the moderation filter is compared like a model
    # The committed experiments' results (experiments/results, as a clone holds them) were scored on the default
    # profile's eval prompts, not these 10: each is named stale with the command that reruns it, in no table.
    stale = json.loads((repo / "metrics" / "summary.json").read_text())["stale_experiments"]
    committed = {p.name for p in (ROOT / "experiments" / "results").iterdir() if p.is_dir() and p.name != "cards"}
    assert set(stale) == committed and {"ppo_cvar", "dpo_seeds"} <= committed  # every committed experiment's results
    assert stale["dpo_seeds"]["refresh"].startswith("dvc repro experiments/dvc.yaml:dpo_seeds")
    assert "## Stale committed experiments" in report_md and "(committed experiment)" not in report_md
    # The feedback loop: on-policy pools, AI labels with the graders' agreement, DPO on them, the method table.
    labels = json.loads((repo / "metrics" / "label_ai.json").read_text())
    assert labels["prompts"] == 8 and labels["grader_queries"] == 8 * 2 * 2
    assert labels["graders"] == ["perspective_distilled", "reward_model"]
    assert 0 <= labels["agreement"]["perspective_distilled vs reward_model"] <= 1
    rlaif = json.loads((repo / "metrics" / "dpo_rlaif" / "s1.json").read_text())
    assert rlaif["steps"] == 2 and rlaif["judges_in_reward"] == ["perspective_distilled"]
    card = json.loads((repo / "metrics" / "cards" / "dpo_rlaif" / "s1.json").read_text())  # the labels' card joined
    assert card["judges"] == ["perspective_distilled"] and card["budget"]["scored_responses"] == 8 * 2
    assert "## Methods compared" in report_md and "| dpo_rlaif |" in report_md
    # The moderation filter on sft: evaluated like a model, its cost in the methods table; tail metrics everywhere.
    flt = json.loads((repo / "metrics" / "filter" / "sft_filtered.json").read_text())
    assert flt["judge_queries"] >= 10 * 2 and flt["extra_samples"] >= 0
    assert json.loads((repo / "metrics" / "eval" / "sft_filtered.json").read_text())["n_prompts"] == 10
    assert "| sft_filtered (moderation filter) |" in report_md and "moderation at inference" in report_md
    tail = ev["tail"]["overall"]  # smoke: 10 prompts, the worst 10% is the single worst prompt
    assert tail["n_prompts"] == 10 and tail["worst_10pct"]["n_tail"] == 1 and tail["worst_20pct"]["n_tail"] == 2
    assert "## Tail risk: the worst prompts" in report_md
    # Human labels: none in the pipeline (none invented); the stages run and say so, the report tells how to add them.
    assert json.loads((repo / "metrics" / "human_labels.json").read_text())["status"] == "no human labels"
    he = json.loads((repo / "metrics" / "human_eval.json").read_text())
    assert he["status"] == "no human labels" and he["tasks"] == 6  # the 6 challenging smoke eval prompts
    assert "No human labels yet" in report_md and not (repo / "data" / "labels" / "human.jsonl").exists()
    plots = run(["dvc", "plots", "show", "--json"], repo)
    assert "plots/sft/plots/metrics/train/loss.tsv" in plots and "plots/dpo/plots/metrics/train/grad_norm.tsv" in plots
    assert all(f"plots/ppo/s{seed}/plots/metrics/objective/kl.tsv" in plots for seed in (0, 1))
    shown = run(["dvc", "metrics", "show"], repo)
    assert "eval_prompts" in shown and "expected_max_toxicity" in shown
    assert "metrics/dpo.json" in shown and "rewards/accuracies" in shown and "loglik_accuracy" in shown

    # Nothing changed: nothing reruns.
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again
    assert "up to date" in run(["dvc", "status"], repo)



@pytest.mark.slow
def test_exp_run_of_a_prepare_param_reruns_prepare_and_is_listed(repo, smoke_workspace):
    """`dvc exp run -S` on a data param, for the prepare stage: it reruns (base_model, upstream, does not), `dvc exp
    show` lists the experiment's data metrics, and the experiment is applied to the workspace, where DVC then names
    the stages that read the new data as changed."""
    try:
        out = run(["dvc", "exp", "run", "-S", "prepare.rtp.eval_nontoxic=3", "prepare"], repo)
        assert "Running stage 'prepare'" in out and "Running stage 'base_model'" not in out, out
        assert json.loads((repo / "metrics" / "data.json").read_text())["counts"]["eval_prompts"] == 6 + 3
        params_out = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo)
        assert "eval_prompts_by_subset.nontoxic" in params_out
        assert yaml.safe_load((repo / "params.yaml").read_text())["prepare"]["rtp"]["eval_nontoxic"] == 3
        status = json.loads(run(["dvc", "status", "--json"], repo))  # the new eval prompts reach their readers
        assert {"generate@base", "evaluate_seeded@ppo-0", "pref_gen"} <= set(status), status
        assert "prepare" not in status and "base_model" not in status
    finally:
        run(["dvc", "exp", "remove", "--all-commits"], repo, check=False)
        smoke_workspace.reset()


@pytest.mark.slow
def test_editing_one_module_changes_exactly_the_stages_whose_code_runs_it(repo):
    """An edit to training/lm_head.py (the CPU loss path of SFT and DPO): `dvc status` lists exactly the stages whose
    import closure holds it (tests/unit/test_stage_deps.py checks those closures against the source)."""
    from detoxrl_tools.stage_code import stage_closures

    module = "src/detoxrl/training/lm_head.py"
    runs, _, _ = stage_closures(repo)
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # every stage, foreach ones as name@key
    expected = {s for s in stages if module in runs[s.split("@")[0]]}
    assert {"sft", "dpo", "dpo_feedback@rlaif"} <= expected and "ppo@0" not in expected
    path = repo / module
    before = path.read_text()
    path.write_text(before + "\n# an edit\n")
    try:
        status = json.loads(run(["dvc", "status", "--json"], repo))
        assert set(status) == expected, sorted(set(status) ^ expected)
        for stage in expected:  # check_params declares training/ whole: the schema imports every method module
            dep = "src/detoxrl/training" if stage == "check_params" else module
            assert status[stage] == [{"changed deps": {dep: "modified"}}], (stage, status[stage])
    finally:
        path.write_text(before)
    assert "up to date" in run(["dvc", "status"], repo)


@pytest.mark.slow
def test_editing_the_user_cli_or_the_docs_generator_reruns_no_stage(repo):
    """The stages run src/detoxrl/stages/<stage>.py through entry.py, never cli.py: a help text fixed in cli.py and an
    edit to the docs generator leave `dvc status` clean."""
    edits = {"src/detoxrl/cli.py": ('help="Params file to read."', 'help="The params file to read."'),
             "src/detoxrl_tools/docs_gen.py": ("", "\n# an edit to the docs generator\n")}
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}
    before = {rel: (repo / rel).read_text() for rel in edits}
    try:
        for rel, (old, new) in edits.items():
            text = before[rel]
            assert old in text
            (repo / rel).write_text(text.replace(old, new, 1) if old else text + new)
        assert json.loads(run(["dvc", "status", "--json"], repo)) == {}
    finally:
        for rel, text in before.items():
            (repo / rel).write_text(text)


@pytest.mark.slow
def test_changed_prepare_param_changes_prepare_alone_and_never_base_model(repo):
    """DVC's planner, asked without training anything: `dvc status` names prepare alone (its param changed), and
    `dvc repro --dry` would run prepare but not base_model, which is upstream of it."""
    before = (repo / "params.yaml").read_text()
    assert "prepare:\n  seed: 42" in before
    (repo / "params.yaml").write_text(before.replace("prepare:\n  seed: 42", "prepare:\n  seed: 43", 1))
    try:
        status = json.loads(run(["dvc", "status", "--json"], repo))
        assert set(status) == {"check_params", "prepare"}, status  # check_params reads the whole file
        assert status["prepare"] == [{"changed deps": {"params.yaml": {"prepare": "modified"}}}], status
        dry = run(["dvc", "repro", "--dry"], repo)
        assert "Running stage 'prepare'" in dry and "Running stage 'base_model'" not in dry, dry
        assert "Stage 'base_model' didn't change, skipping" in dry, dry
    finally:
        (repo / "params.yaml").write_text(before)
    assert "up to date" in run(["dvc", "status"], repo)


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
    before = (repo / "params.yaml").read_text()
    proc = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (repo / "params.yaml").write_text(before)  # a failed `dvc exp run` leaves its change in the workspace


TOY_STAGE = """
  toy:  # a new method: its stage (DPO's command, once per seed) ...
    matrix:
      seed: ${seeds}
    cmd: >-
      detoxrl dpo --seed ${item.seed} --out models/toy/s${item.seed} --metrics metrics/toy/s${item.seed}.json
      --plots plots/toy/s${item.seed}
    deps:
      - models/sft
      - data/processed/pref_train.jsonl
      - data/processed/pref_val.jsonl
    params:
      - dpo
    outs:
      - models/toy/s${item.seed}
    metrics:
      - metrics/toy/s${item.seed}.json:
          cache: false
      - metrics/cards/toy/s${item.seed}.json:
          cache: false
"""


@pytest.mark.slow
def test_a_new_method_is_its_stage_plus_one_seeded_line(repo, smoke_workspace):
    """A stage in dvc.yaml and `- toy` under `seeded:`: every seed of it is generated, evaluated and reported as one
    method, with its interval over seeds and prompts, each seed's value and its card's budget; no code changes."""
    dvc_yaml, params = repo / "dvc.yaml", repo / "params.yaml"
    text = dvc_yaml.read_text()
    dvc_yaml.write_text(text.replace("\n  pref_gen:", TOY_STAGE + "\n  pref_gen:", 1))
    ptext = params.read_text()
    assert "\nseeded:\n" in ptext
    params.write_text(ptext.replace("\nseeded:\n", "\nseeded:\n  - toy\n", 1))
    try:
        out = run(["dvc", "repro", "report"], repo)
        for stage in ("toy@0", "toy@1", "generate_seeded@toy-0", "evaluate_seeded@toy-1", "report"):
            assert f"Running stage '{stage}'" in out, out[-3000:]
        summary = json.loads((repo / "metrics" / "summary.json").read_text())
        toy = summary["models"]["toy"]
        assert toy["runs"] == ["toy/s0", "toy/s1"] and toy["interval"] == "2 seeds: seeds x prompts"
        per_seed = toy["per_seed"]["expected_max_toxicity"]
        for seed, value in enumerate(per_seed):  # each seed's value is its own evaluation's
            ev = json.loads((repo / "metrics" / "eval" / "toy" / f"s{seed}.json").read_text())
            assert value == pytest.approx(ev["toxicity"]["overall"]["expected_max_toxicity"]["value"])
        assert toy["expected_max_toxicity"]["value"] == pytest.approx(sum(per_seed) / 2)
        assert toy["method"] == "dpo" and toy["budget"]["sample_unit"] == "pairs"
        assert "toy" in summary["vs_baseline"] and "toy" in summary["vs_models"]["sft"]
        md = (repo / "reports" / "report.md").read_text()
        assert "| toy | 2 seeds: seeds x prompts |" in md.split("## Methods compared")[1]
    finally:
        dvc_yaml.write_text(text)
        params.write_text(ptext)
        smoke_workspace.reset()
