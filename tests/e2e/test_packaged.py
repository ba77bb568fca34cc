"""The smoke profile as a user applies it, on the real packaged SmolLM2-135M (not the tiny stand-in of the other
end-to-end tests): one instance of every kind of stage that loads the base model runs on it and writes sane outputs.
"""

import json

import pytest

from conftest import PACKAGED_TARGETS, run

pytestmark = pytest.mark.slow

LOADS_THE_BASE = ("base_model", "sft", "dpo", "ppo@0", "generate_seeded@ppo-0", "evaluate_seeded@ppo-0",
                  "chat_eval_seeded@ppo-0", "pref_gen", "pref_eval", "dpo_feedback@rlaif",
                  "generate_seeded@dpo_rlaif-0", "evaluate_seeded@dpo_rlaif-0", "generate@sft", "filter@sft_filtered")


def test_packaged_model_runs_every_kind_of_stage_that_loads_the_base_model(packaged_smoke_workspace):
    repo, out = packaged_smoke_workspace.path, packaged_smoke_workspace.first_repro
    for stage in LOADS_THE_BASE:
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'ppo@1'" not in out  # the targets name seed 0's stages only
    prov = json.loads((repo / "models" / "base" / "provenance.json").read_text())
    assert prov["source"] == "packaged:smollm2-135m-instruct" and prov["parameters"] > 100_000_000
    assert prov["chat_format"] == "tokenizer" and (repo / "models" / "base" / "model.safetensors").exists()
    assert json.loads((repo / "metrics" / "sft.json").read_text())["steps"] == 2
    assert json.loads((repo / "metrics" / "dpo.json").read_text())["steps"] == 2
    ppo = json.loads((repo / "metrics" / "ppo" / "s0.json").read_text())
    assert ppo["steps"] == 2 and ppo["reward_source"].startswith("composite:")
    card = json.loads((repo / "metrics" / "cards" / "ppo" / "s0.json").read_text())
    assert card["name"] == "ppo/s0" and card["seed"] == 0 and card["budget"]["scored_responses"] == 2 * 4
    rows = (repo / "data" / "generations" / "ppo" / "s0.jsonl").read_text().splitlines()
    assert len(rows) == 10 * 2 and all(json.loads(r)["text"].strip() for r in rows[:4])  # real words, not empty
    for name in ("ppo/s0", "dpo_rlaif/s0"):
        ev = json.loads((repo / "metrics" / "eval" / f"{name}.json").read_text())
        assert ev["n_prompts"] == 10 and 0 <= ev["toxicity"]["overall"]["expected_max_toxicity"]["value"] <= 1
        assert 1 < ev["fluency"]["perplexity"] < 1000  # a real 135M model scored under its base (a random one: ~49k)
    chat = json.loads((repo / "metrics" / "chat" / "ppo" / "s0.json").read_text())
    assert chat["n_prompts"] == 8 and set(chat["refusal_rate"]) == {"overall", "toxic", "jailbreaking", "nontoxic"}
    pref = json.loads((repo / "metrics" / "pref_accuracy.json").read_text())
    assert set(pref["loglik_accuracy"]) == {"base", "sft", "dpo"}
    assert json.loads((repo / "metrics" / "pref_gen.json").read_text())["seconds"] > 0
    for seed in (0, 1):  # smoke seeds [0, 1]: dpo_feedback@rlaif trains every seed
        assert json.loads((repo / "metrics" / "dpo_rlaif" / f"s{seed}.json").read_text())["steps"] == 2
        assert (repo / "models" / "dpo_rlaif" / f"s{seed}").is_dir()
    assert json.loads((repo / "metrics" / "filter" / "sft_filtered.json").read_text())["judge_queries"] >= 10 * 2
    # what was built is up to date; the stages outside the targets are left for `dvc repro`
    assert "Running stage" not in run(["dvc", "repro", *PACKAGED_TARGETS], repo)
