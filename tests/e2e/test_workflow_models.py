"""The smoke workflow with other models, processes and people: a GPT-2-style base without a chat template through
every kind of stage, `dvc exp run -S compute.num_processes=2`, and labels clicked in a real browser that train DPO
and reach the report. Each test takes this worker's copy of the smoke workspace (tests/conftest.py) and resets it.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import cli_env, run
from test_workflow import PPO_TRAIN, SEEDS, UPSTREAM, ran

pytestmark = pytest.mark.slow


def test_a_base_model_without_chat_template_runs_every_stage_that_loads_it(ws, tmp_path):
    """GPT-2-style base model (no chat template, Conv1D layers, `transformer.h` blocks) with `chat_format: hh`:
    every kind of stage that loads the base model (or a decoder RM on it) runs on it, and each formats chats with the
    HH turns saved in models/base."""
    from tiny import build_tiny_gpt2

    repo = ws.path
    gpt2 = build_tiny_gpt2(repo / "models" / "base", tmp_path / "gpt2")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"].update(source=f"local:{gpt2}", chat_format="hh")
    gpt2_modules = ["c_attn", "c_proj", "c_fc"]
    for stage in ("sft", "dpo", "dpo_feedback", "reward_model", "ppo"):
        params[stage]["lora"]["target_modules"] = gpt2_modules
    # the RM on the base model too (a decoder reading the HH template), not the default MiniLM encoder
    params["reward_model"]["backbone"] = "base"
    params["reward_model"]["lora"]["enabled"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # one instance of every kind of stage that loads the base model or the RM (the report and the judges' stages do
    # not): a seeded method's stages for seed 0 (ppo@0 and its generate/evaluate/chat_eval) stand for generate,
    # evaluate and chat_eval of every model; sft and dpo train, pref_eval scores them
    targets = ["evaluate_seeded@ppo-0", "chat_eval_seeded@ppo-0", "pref_eval", "dpo_feedback@rlaif",
               "eval_reward_model"]
    out = run(["dvc", "repro", *targets], repo)
    assert {"base_model", "prepare", "sft", "dpo", "reward_model", "eval_reward_model", "ppo@0", "pref_eval",
            "generate_seeded@ppo-0", "evaluate_seeded@ppo-0", "pref_gen", "dpo_feedback@rlaif",
            "chat_eval_seeded@ppo-0"} <= ran(out), out
    # the eval files read below are this run's
    assert json.loads((repo / "models" / "reward" / "detoxrl_reward.json").read_text())["format"] == "chat"
    prov = json.loads((repo / "models" / "base" / "provenance.json").read_text())
    assert prov["chat_format"] == "hh" and prov["source"] == f"local:{gpt2}"
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(repo / "models" / "ppo" / "s0").model_type == "gpt2"
    for model_dir in ("sft", "ppo/s0", "reward"):  # the HH template travelled with every model the stages wrote
        tok = AutoTokenizer.from_pretrained(repo / "models" / model_dir)
        assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                       tokenize=False) == "\n\nHuman: x\n\nAssistant:"
    assert json.loads((repo / "metrics" / "ppo" / "s0.json").read_text())["steps"] == params["ppo"]["steps"]
    ev = json.loads((repo / "metrics" / "eval" / "ppo" / "s0.json").read_text())
    assert 0 <= ev["toxicity"]["overall"]["expected_max_toxicity"]["value"] <= 1
    assert ev["fluency"]["perplexity"] > 1  # scored under the GPT-2 base
    pref = json.loads((repo / "metrics" / "pref_accuracy.json").read_text())
    assert set(pref["loglik_accuracy"]) == {"base", "sft", "dpo"}  # the GPT-2 sft and dpo models, scored


def test_exp_run_with_two_processes(ws):
    """`dvc exp run -S compute.num_processes=2` as the README shows it: the training stages and generation re-launch
    themselves under `accelerate launch` (2 CPU processes, gloo), the main process alone writes, and the metrics
    files keep their schema. The smoke profile's batches of 1 are doubled so that 2 processes can share them."""
    repo = ws.path
    before = {f: json.loads((repo / "metrics" / f).read_text())
              for f in ("ppo/s0.json", "sft.json", "eval/ppo/s0.json")}
    # one stage of each kind that re-launches (training with TRL, PPO, generation, evaluation) and what they need
    targets = ["dpo", "evaluate_seeded@ppo-0"]
    out = run(["dvc", "exp", "run", "-S", "compute.num_processes=2", "-S", "sft.grad_accum=2", "-S", "dpo.grad_accum=2",
               "-S", "reward_model.grad_accum=2", *targets], repo)
    assert {"sft", "dpo", "reward_model", "ppo@0", "generate_seeded@ppo-0", "evaluate_seeded@ppo-0"} <= ran(out), out
    assert "ppo@1" not in ran(out), out  # the targets need seed 0's model only
    assert out.count("ppo: precision") == 1 and "2 process(es)" in out, out  # one main process speaks
    assert "evaluate: 2 processes" in out and out.count("ppo/s0: expected max toxicity") == 1, out
    ppo = json.loads((repo / "metrics" / "ppo" / "s0.json").read_text())
    assert ppo["processes"] == 2 and set(ppo) == set(before["ppo/s0.json"])
    sft = json.loads((repo / "metrics" / "sft.json").read_text())
    assert sft["platform"]["processes"] == 2 and set(sft) == set(before["sft.json"])
    ev = json.loads((repo / "metrics" / "eval" / "ppo" / "s0.json").read_text())
    assert set(ev) == set(before["eval/ppo/s0.json"]) and ev["n_prompts"] == before["eval/ppo/s0.json"]["n_prompts"]
    rows = [json.loads(line) for line in (repo / "data" / "generations" / "ppo" / "s0.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["id"] for line in (repo / "data/processed/eval_prompts.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [i for i in prompts for _ in range(2)]  # gathered back in prompt order
    for curve in ("plots/ppo/s0/plots/metrics/reward/score_mean.tsv", "plots/sft/plots/metrics/train/loss.tsv"):
        steps = [line.split("\t")[0] for line in (repo / curve).read_text().splitlines()[1:]]
        assert len(steps) == len(set(steps)), curve  # one writer: no step logged twice


HUMAN_LINES = ("  # human: {", "  # rlaif_human: {")  # feedback_runs' human runs
HUMAN_SEEDED = ("  # - dpo_human ", "  # - dpo_rlaif_human ")  # their methods in `seeded:` (trained once per seed)


def test_labels_clicked_in_the_browser_train_dpo_human_and_reach_the_report(ws):
    """The README's human-label path on the smoke pipeline, with labels this test clicks in headless Chromium."""
    from browser import browser, label_server, wait_progress
    from detoxrl.data.labels import read_labels, pool_tasks
    from detoxrl.io import read_jsonl

    repo = ws.path
    pool = pool_tasks(read_jsonl(repo / "data" / "feedback" / "human_pool.jsonl"))
    n_eval = json.loads((repo / "metrics" / "human_eval.json").read_text())["tasks"]
    try:
        with browser() as b:
            for mode, n, keys in (("pairs", len(pool), ["ArrowLeft", "ArrowRight"]),
                                  ("eval", n_eval, ["ArrowLeft", "ArrowRight", "t"])):
                with label_server(["--mode", mode], repo, cli_env()) as (_, url):
                    page = b.new_page()
                    page.goto(url)
                    page.fill("#annotator", "ci")
                    page.keyboard.press("Enter")
                    wait_progress(page, 0, n)
                    for i in range(n):
                        page.keyboard.press(keys[i % len(keys)])
                        wait_progress(page, i + 1, n)
        people = read_labels(repo / "data" / "labels" / "human.jsonl")
        judged = read_labels(repo / "data" / "labels" / "human_eval.jsonl")
        assert len(people) == len(pool) and {x["choice"] for x in people} <= {"a", "b"}
        assert len(judged) == n_eval and "tie" in {x["choice"] for x in judged}

        # README, "Human labels": track the labels with DVC, uncomment the human runs and models, repro.
        run(["dvc", "add", "-q", "data/labels/human.jsonl", "data/labels/human_eval.jsonl"], repo)
        text = (repo / "params.yaml").read_text()
        for line in HUMAN_LINES:
            assert line in text, line
            text = text.replace(line, line.replace("# ", "", 1))
        # `detoxrl use-profile` rewrote params.yaml with the `seeded:` items unindented, its comments as they were:
        # the uncommented items take the indentation of the listed ones
        indent = re.search(r"^( *)- dpo_rlaif\b", text, re.MULTILINE).group(1)
        for line in HUMAN_SEEDED:
            assert line in text, line
            text = text.replace(line, f"{indent}{line.strip().removeprefix('# ')} ")
        (repo / "params.yaml").write_text(text)
        out = run(["dvc", "repro"], repo)
        human_seeded = {f"{stage}_seeded@{method}-{seed}" for stage in ("generate", "evaluate", "chat_eval")
                        for method in ("dpo_human", "dpo_rlaif_human") for seed in SEEDS}
        assert {"human_pairs", "dpo_feedback@human", "dpo_feedback@rlaif_human", "human_eval",
                "report"} | human_seeded <= ran(out), out
        assert not ran(out) & (UPSTREAM | PPO_TRAIN | {"dpo", "label_ai", "dpo_feedback@rlaif"})

        hl = json.loads((repo / "metrics" / "human_labels.json").read_text())
        assert hl["labels"] == len(pool) and hl["pairs"] == len(pool) and hl["annotators"] == ["ci"]
        assert hl["train_pairs"] + hl["val_pairs"] == len(pool)
        for seed in SEEDS:  # every seed trained, its card carrying the human labels' signal
            assert json.loads((repo / "metrics" / "dpo_human" / f"s{seed}.json").read_text())["judges_in_reward"] == [
                "human"]
            assert (repo / "models" / "dpo_rlaif_human" / f"s{seed}").is_dir()
        he = json.loads((repo / "metrics" / "human_eval.json").read_text())
        win = [{"a": 0.0, "b": 1.0, "tie": 0.5}[x["choice"]] for x in judged]
        assert he["status"] == "ok" and he["win_rate_b"]["value"] == pytest.approx(sum(win) / len(win))
        assert set(he["judge_agreement"]) >= {"offline", "perspective_distilled"}
        report_md = (repo / "reports" / "report.md").read_text()
        assert f"| dpo_human | {len(SEEDS)} seeds: seeds x prompts |" in report_md
        assert f"| dpo_rlaif_human | {len(SEEDS)} seeds: seeds x prompts |" in report_md
        assert f"Preference labels: {len(pool)} from 1 annotator(s)" in report_md
        assert f"win rate (ties count half): {he['win_rate_b']['value']:.3f} [" in report_md
        # dpo_rlaif_human started from dpo_rlaif: the AI grader's judge is in its training signal too (its card
        # composes the init's); the people are its signal, not a toxicity judge the report evaluates
        summary = json.loads((repo / "metrics" / "summary.json").read_text())
        assert summary["models"]["dpo_rlaif_human"]["judges_in_reward"] == ["perspective_distilled"]
        assert summary["models"]["dpo_rlaif_human"]["signal"] == "DPO on human preference labels (detoxrl label-human)"
        assert "up to date" in run(["dvc", "status"], repo)
    finally:  # untracked labels would change the next test's baseline
        for path in (repo / "data" / "labels").glob("human*"):
            path.unlink()
