"""GRPO and RLOO (training/grpo.py): TRL's real trainers on a tiny random Llama, with a project RewardSource."""

import json

import pytest
from conftest import ROOT
from safetensors.torch import load_file
from tiny import build_tiny_char_model

from detoxrl import DetoxError
from detoxrl.cards import read_card
from detoxrl.schema import load_params
from detoxrl.scoring.rewards import reward_models_in
from detoxrl.training import grpo as G
from detoxrl.training.grpo import OnlineRLParams


class LetterReward:
    """The share of the letter "a" in the response; records what it was asked and what it answered."""
    name, judges = "letter_a", []

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses):
        scores = [t.count("a") / max(len(t), 1) + 0.01 * len(t) for t in responses]
        self.calls.append((list(prompts), list(responses), scores))
        return scores


def params(**kw) -> OnlineRLParams:
    d = dict(seed=0, steps=2, prompts_per_step=2, num_generations=2, num_iterations=1, lr=3e-3, beta=0.05,
             epsilon=0.2, max_grad_norm=1.0, max_new_tokens=6, temperature=1.0, top_p=1.0,
             lora=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"]),
             mixed_precision="none", gradient_checkpointing=False, save_steps=0,
             compute=dict(num_processes=None, accelerate_config=None))
    d.update(kw)
    return OnlineRLParams(**d)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_char_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "ppo_prompts.jsonl"
    words = ["The", "A man", "She said", "Why"]
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": w}) + "\n" for i, w in enumerate(words * 2)))
    return path


def run(kind, tiny_dir, prompts, out, p, reward=None, seed=None):
    return G.train_online(kind, tiny_dir, tiny_dir, prompts, out / "model", out / "metrics.json", out / "plots", p,
                          reward or LetterReward(), lambda text, tok: "<" + text, seed,
                          checkpoint_dir=out / "ckpt", cards_dir=out / "cards", reward_models=["models/reward"])


def curve(out, name):
    rows = (out / "plots" / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[-1]) for r in rows]


def test_grpo_writes_a_loadable_merged_model_metrics_a_card_and_curves(tiny_dir, prompts, tmp_path):
    p = params()
    final = run("grpo", tiny_dir, prompts, tmp_path, p, seed=3)
    from detoxrl.models.load import load_for_inference

    load_for_inference(tmp_path / "model", tiny_dir)
    assert not (tmp_path / "model" / "adapter_config.json").exists()  # merged: loads like PPO's output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == final
    assert metrics["scored_responses"] == p.steps * p.prompts_per_step * p.num_generations == 8
    assert metrics["seed"] == 3 and metrics["reward_source"] == "letter_a" and metrics["judges_in_reward"] == []
    assert metrics["platform"]["precision"] == "none" and metrics["optimizer_steps"] == 2
    card = read_card("grpo/s3", tmp_path / "cards")
    assert card["method"] == "grpo" and card["seed"] == 3 and card["reward_models"] == ["models/reward"]
    assert card["budget"]["scored_responses"] == 8 and card["budget"]["sample_unit"] == "completions"
    for name in ("reward", "kl", "loss", "step_time"):
        assert len(curve(tmp_path, name)) == 2, name
    assert not (tmp_path / "ckpt").exists()


def test_the_reward_source_gets_raw_prompts_and_the_completions_and_its_scores_are_what_trl_logs(
        tiny_dir, prompts, tmp_path):
    reward = LetterReward()
    run("grpo", tiny_dir, prompts, tmp_path, params(steps=3), reward)
    assert len(reward.calls) == 3  # one call per generation round, the round's 2 prompts x 2 completions
    raw = {json.loads(line)["text"] for line in prompts.read_text().splitlines()}
    for asked, completions, _ in reward.calls:
        assert len(asked) == len(completions) == 4
        assert set(asked) <= raw  # PPO's reward input: the RTP text, not the formatted "<text" model input
        assert asked[0] == asked[1] and asked[2] == asked[3]  # a group: one prompt, num_generations completions
    logged = curve(tmp_path, "reward")
    assert logged == pytest.approx([sum(s) / len(s) for _, _, s in reward.calls], abs=1e-6)


def test_the_seed_changes_the_run_and_the_same_seed_reproduces_it_bit_for_bit(tiny_dir, prompts, tmp_path):
    outs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        reward = LetterReward()
        run("grpo", tiny_dir, prompts, tmp_path / name, params(), reward, seed=seed)
        outs[name] = (load_file(tmp_path / name / "model" / "model.safetensors"), reward.calls)
    a, b, c = outs["a"][0], outs["b"][0], outs["c"][0]
    assert all((a[k] == b[k]).all() for k in a)
    assert outs["a"][1] == outs["b"][1]
    assert any((a[k] != c[k]).any() for k in a)
    assert outs["a"][1] != outs["c"][1]


def test_rloo_trains_with_the_same_reward_and_writes_its_card(tiny_dir, prompts, tmp_path):
    reward = LetterReward()
    final = run("rloo", tiny_dir, prompts, tmp_path, params(num_iterations=2), reward, seed=1)
    assert final["trainer"] == "rloo" and final["optimizer_steps"] == 4 and final["scored_responses"] == 8
    assert len(reward.calls) == 2  # num_iterations reuse a round's completions: no extra scoring
    assert curve(tmp_path, "reward") == pytest.approx([sum(s) / len(s) for _, _, s in reward.calls], abs=1e-6)
    assert read_card("rloo/s1", tmp_path / "cards")["method"] == "rloo"


def test_config_sets_precision_checkpointing_and_the_round_size_explicitly():
    args = G.build_config("grpo", params(prompts_per_step=4, num_generations=4, num_iterations=2, steps=16), 5,
                          "/tmp/x", "none", use_cpu=True)
    assert (args.bf16, args.gradient_checkpointing) == (False, False)  # TRL's defaults are both on
    assert (args.max_steps, args.generation_batch_size, args.num_generations) == (32, 16, 4)
    assert args.seed == 5 and args.report_to == [] and args.lr_scheduler_type == "constant"
    assert G.build_config("rloo", params(), 0, "/tmp/x", "bf16", use_cpu=True).bf16 is True


def test_a_round_that_cannot_be_split_over_the_processes_is_one_clear_error():
    with pytest.raises(DetoxError, match="grpo.prompts_per_step x num_generations"):
        G.build_config("grpo", params(prompts_per_step=3, num_generations=2), 0, "/tmp/x", "none", num_processes=4)
    with pytest.raises(DetoxError, match="trainer 'ppo'"):
        G.build_config("ppo", params(), 0, "/tmp/x", "none")


def test_default_grpo_and_rloo_score_as_many_responses_as_ppo():
    p = load_params(ROOT / "params.yaml")
    for block in (p.grpo, p.rloo):
        assert block.steps * block.prompts_per_step * block.num_generations == p.ppo.steps * p.ppo.batch_size
    assert "grpo" in p.seeded
    assert reward_models_in(p.ppo.reward) == ["models/reward"]


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tiny_dir, prompts, tmp_path,
                                                                                           capsys):
    class Interrupted(LetterReward):
        def score(self, prompts, responses):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().score(prompts, responses)

    p = params(steps=3, num_iterations=2, save_steps=2)  # a checkpoint after round 2 = optimizer step 4
    run("grpo", tiny_dir, prompts, tmp_path / "whole", p)
    with pytest.raises(KeyboardInterrupt):
        run("grpo", tiny_dir, prompts, tmp_path / "cut", p, Interrupted())
    assert (tmp_path / "cut" / "ckpt" / "checkpoint-4").is_dir() and not (tmp_path / "cut" / "model").exists()
    reward = LetterReward()
    run("grpo", tiny_dir, prompts, tmp_path / "cut", p, reward)
    assert "resuming from" in capsys.readouterr().out and len(reward.calls) == 1  # only the third round ran again
    whole, cut = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("whole", "cut"))
    assert all((whole[k] == cut[k]).all() for k in whole)
    assert curve(tmp_path / "cut", "reward") == curve(tmp_path / "whole", "reward")


def test_the_cli_seed_names_every_output_and_overrides_the_block_seed(tiny_dir, tmp_path, monkeypatch):
    import shutil

    import yaml
    from typer.testing import CliRunner

    from detoxrl.stages.grpo import app

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ppo"]["reward"].update(source="toxicity", judge="offline")  # no trained judge or RM in this scratch dir
    raw["judges"]["cache_dir"] = str(tmp_path / "cache")
    raw["grpo"].update(steps=1, prompts_per_step=2, num_generations=2, max_new_tokens=4, save_steps=0,
                       mixed_precision="none", lora={**raw["grpo"]["lora"], "target_modules": ["q_proj"]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for d in ("base", "sft"):
        shutil.copytree(tiny_dir, tmp_path / "models" / d)
    (tmp_path / "data" / "processed").mkdir(parents=True)
    (tmp_path / "data" / "processed" / "ppo_prompts.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["The", "Why", "A man"]))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "grpo seed 5: 4 scored responses" in result.output
    assert (tmp_path / "models/grpo/s5/config.json").exists() and (tmp_path / "plots/grpo/s5/plots/metrics").is_dir()
    assert json.loads((tmp_path / "metrics/grpo/s5.json").read_text())["seed"] == 5
    card = read_card("grpo/s5", tmp_path / "metrics/cards")
    assert card["reward_models"] == [] and card["judges"] == ["offline"]


@pytest.mark.slow
def test_dvc_repro_grpo_at_a_seed_writes_the_declared_outputs(tiny_dir, tmp_path):
    import shutil

    import yaml
    from conftest import run as sh

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("base", "sft"):
        shutil.copytree(tiny_dir, repo / "models" / d)
    for d in ("reward", "judge"):  # deps of the stage, unused by this reward
        (repo / "models" / d).mkdir()
        (repo / "models" / d / "README").write_text("placeholder\n")
    (repo / "data" / "processed").mkdir(parents=True)
    (repo / "data" / "processed" / "ppo_prompts.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["The", "Why", "A man", "She said"]))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["compute"]["num_processes"] = 1
    p["ppo"]["reward"].update(source="toxicity", judge="offline")
    p["grpo"].update(steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=4, save_steps=0,
                     mixed_precision="none")
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    sh(["dvc", "init", "--no-scm", "-q"], repo)
    sh(["detoxrl", "check-params"], repo)  # metrics/params_ok.json, every stage's dep (a clone has it committed)
    out = sh(["dvc", "repro", "--single-item", "grpo@2"], repo)
    assert "grpo seed 2: 8 scored responses" in out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["grpo@2"]
    assert {o["path"] for o in lock["outs"]} == {"models/grpo/s2", "metrics/grpo/s2.json",
                                                 "metrics/cards/grpo/s2.json", "plots/grpo/s2/plots/metrics"}
    assert read_card("grpo/s2", repo / "metrics" / "cards")["seed"] == 2
