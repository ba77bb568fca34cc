"""KTO (training/kto.py): the labelling rule, and TRL's real KTOTrainer on a tiny random Llama labelled by PPO's
reward source (the offline toxicity judge here)."""

import json

import pytest
import yaml
from pydantic import ValidationError

from detoxrl import DetoxError
from detoxrl.cards import read_card
from detoxrl.training import kto as K
from conftest import ROOT
from tiny import build_tiny_model


def params(**kw) -> K.KTOParams:
    d = dict(seed=0, max_steps=None, epochs=1, batch_size=4, grad_accum=1, lr=3e-3, lr_scheduler="constant",
             warmup_ratio=0.0, max_length=64, logging_steps=1, save_steps=100, checkpoint_dir="unused",
             quantization="none", bf16=False, gradient_checkpointing=False,
             lora=dict(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"]),
             compute=dict(num_processes=None, accelerate_config=None),
             beta=0.1, desirable_weight=None, undesirable_weight=1.0, label_rule="median", label_threshold=None,
             samples_per_prompt=2, max_new_tokens=6, temperature=1.0, top_p=1.0, generation_batch_size=8)
    d.update(kw)
    return K.KTOParams(**d)


# --- the labelling rule and the data order (no model)

def test_median_rule_labels_the_strictly_better_half_and_ties_at_the_median_undesirable():
    labels, cut = K.label([0.1, 0.9, 0.5, 0.7], "median")
    assert cut == pytest.approx(0.6) and labels == [False, True, False, True]
    labels, cut = K.label([0.2, 0.5, 0.5, 0.5, 0.9], "median")  # three tie at the median
    assert cut == 0.5 and labels == [False, False, False, False, True]
    labels, _ = K.label([-3.0, 2.0, 0.5], "median")  # any scale: a normalised composite's z-scores
    assert labels == [False, True, False]


def test_median_rule_refuses_a_reward_that_ties_half_the_responses_at_the_top():
    with pytest.raises(DetoxError, match="no response scored above the median"):
        K.label([0.96, 0.96, 0.96, 0.2], "median")
    with pytest.raises(DetoxError, match="no response scored above the median"):
        K.label([0.5] * 8, "median")


def test_threshold_rule_is_an_absolute_verdict_whatever_the_other_scores():
    labels, cut = K.label([0.2, 0.5, 0.9], "threshold", 0.5)
    assert cut == 0.5 and labels == [False, True, True]
    assert K.label([0.95, 0.99], "threshold", 0.5)[0] == [True, True]  # every response clean: all desirable
    with pytest.raises(DetoxError, match="label_threshold"):
        K.label([0.1], "threshold", None)
    with pytest.raises(DetoxError, match="no scored responses"):
        K.label([], "median")


def test_label_stats_count_both_classes_and_they_add_up():
    records = [{"reward": r, "desirable": d, "eos": e} for r, d, e in
               [(0.1, False, True), (0.9, True, False), (0.8, True, True), (0.3, False, False)]]
    s = K.label_stats(records, "median", None)
    assert (s["desirable"], s["undesirable"], s["label_cut"]) == (2, 2, pytest.approx(0.55))
    assert s["reward_mean_desirable"] == pytest.approx(0.85) and s["eos_fraction"] == 0.5


def test_training_order_is_round_robin_so_neighbours_are_different_prompts():
    records = [{"id": f"p{i}", "sample": j} for i in range(3) for j in range(2)]
    order = K.training_order(records, 2)
    assert [(r["id"], r["sample"]) for r in order] == [("p0", 0), ("p1", 0), ("p2", 0), ("p0", 1), ("p1", 1),
                                                       ("p2", 1)]
    assert all(a["id"] != b["id"] for a, b in zip(order, order[1:]))


def test_params_refuse_a_threshold_without_the_threshold_rule_and_a_batch_of_one():
    with pytest.raises(ValidationError, match="label_rule threshold needs label_threshold"):
        params(label_rule="threshold")
    with pytest.raises(ValidationError, match="used only by label_rule threshold"):
        params(label_threshold=0.5)
    with pytest.raises(ValidationError, match="at least 2 examples"):
        params(batch_size=1)
    assert params(label_rule="threshold", label_threshold=0.5).label_threshold == 0.5
    assert all(K.KTOParams.model_fields[f].description for f in K.KTOParams.model_fields)  # the params reference


def test_the_budget_is_ppos_scored_responses_and_the_kto_stage_loads_only_that_of_ppo():
    from detoxrl.params import load_blocks
    from detoxrl.schema import load_params

    ppo = load_params(ROOT / "params.yaml").ppo
    assert K.ppo_scored_responses(ppo) == ppo.steps * ppo.batch_size
    p = load_blocks(ROOT / "params.yaml", K.BLOCKS, K.PPO_BUDGET)  # what stages/kto.py loads, less PPO's reward
    assert K.ppo_scored_responses(p.ppo) == ppo.steps * ppo.batch_size and p.kto.label_rule == "median"
    with pytest.raises(AttributeError, match="does not load the params block 'lr'"):
        _ = p.ppo.lr  # the rest of the ppo block is not the kto stage's


# --- training on a tiny model

@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory):
    """A tiny random Llama over SmolLM2's vocabulary: its samples are word pieces, which the offline judge scores
    apart (it gives the same score to every text without a word it knows, e.g. a character model's)."""
    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "ppo_prompts.jsonl"
    words = ["The", "A man", "She said", "Why", "You are", "Then", "He is", "What a"]
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": w}) + "\n" for i, w in enumerate(words)))
    return path


@pytest.fixture
def reward(tmp_path):
    """PPO's reward source as make_reward builds it, here 1 - the offline judge's toxicity (no trained judge or RM in
    a scratch dir)."""
    from detoxrl.schema import Params
    from detoxrl.scoring.rewards import make_reward

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ppo"]["reward"].update(source="toxicity", judge="offline")
    raw["judges"]["cache_dir"] = str(tmp_path / "cache")
    return make_reward(Params.model_validate(raw))


class Counting:
    """A reward source wrapper counting the responses it scores."""

    def __init__(self, inner):
        self.inner, self.name, self.judges, self.scored = inner, inner.name, inner.judges, 0

    def score(self, prompts, responses):
        self.scored += len(responses)
        return self.inner.score(prompts, responses)


def run(tiny_dir, prompts, out, reward, p=None, seed=None, scored_responses=8):
    return K.train_kto(tiny_dir, tiny_dir, prompts, out / "model", out / "metrics.json", out / "plots", p or params(),
                       reward, lambda text, tok: "<" + text, seed, scored_responses=scored_responses,
                       checkpoint_dir=out / "ckpt", cards_dir=out / "cards", reward_models=[])


def test_kto_labels_ppos_budget_trains_and_writes_a_merged_model_labels_metrics_card_and_curves(
        tiny_dir, prompts, reward, tmp_path):
    from detoxrl.models.load import load_for_inference

    final = run(tiny_dir, prompts, tmp_path, reward, seed=3)
    load_for_inference(tmp_path / "model", tiny_dir)
    assert not (tmp_path / "model" / "adapter_config.json").exists()  # merged: loads like GRPO's output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == final and metrics["seed"] == 3
    assert metrics["scored_responses"] == 8 and metrics["prompts"] == 4
    assert metrics["desirable"] + metrics["undesirable"] == metrics["scored_responses"]
    assert metrics["desirable"] >= 1 and metrics["undesirable"] >= 1
    assert metrics["desirable_weight"] == pytest.approx(metrics["undesirable"] / metrics["desirable"])
    assert metrics["steps"] == 2 and metrics["examples_seen"] == 8  # one epoch of 8 in batches of 4
    assert metrics["reward_source"] == "toxicity:offline" and metrics["judges_in_reward"] == ["offline"]
    labels = [json.loads(line) for line in (tmp_path / "model" / K.LABELS_FILE).read_text().splitlines()]
    assert len(labels) == 8 and sum(r["desirable"] for r in labels) == metrics["desirable"]
    assert {r["prompt"] for r in labels} <= {json.loads(line)["text"] for line in prompts.read_text().splitlines()}
    assert all(d == (r > metrics["label_cut"]) for d, r in ((x["desirable"], x["reward"]) for x in labels))
    card = read_card("kto/s3", tmp_path / "cards")
    assert card["method"] == "kto" and card["seed"] == 3 and card["judges"] == ["offline"]
    assert card["signal"] == "toxicity:offline" and card["budget"]["scored_responses"] == 8
    assert card["budget"]["sample_unit"] == "labelled completions" and card["budget"]["training_samples"] == 8
    rows = (tmp_path / "plots" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    assert len(rows) == 2
    assert not (tmp_path / "ckpt").exists()


def test_the_same_seed_reproduces_labels_and_model_bytes_and_another_seed_does_not(tiny_dir, prompts, reward,
                                                                                   tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(tiny_dir, prompts, tmp_path / name, reward, seed=seed)
    model, labels = (lambda d: (tmp_path / d / "model" / "model.safetensors").read_bytes(),
                     lambda d: (tmp_path / d / "model" / K.LABELS_FILE).read_text())
    assert model("a") == model("b") and labels("a") == labels("b")
    assert model("a") != model("c") and labels("a") != labels("c")


def test_an_interrupted_run_resumes_from_its_checkpoint_without_scoring_again_and_ends_as_an_uninterrupted_one(
        tiny_dir, prompts, reward, tmp_path, monkeypatch, capsys):
    p = params(save_steps=1)  # two steps: a checkpoint after each
    run(tiny_dir, prompts, tmp_path / "whole", reward, p)
    real = K.common.make_curves_callback

    def interrupted_after_the_first_checkpoint(plots_dir):
        class Interrupt(type(real(plots_dir))):
            def on_save(self, args, state, control, **kwargs):
                raise KeyboardInterrupt

        return Interrupt()

    monkeypatch.setattr(K.common, "make_curves_callback", interrupted_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, prompts, tmp_path / "cut", reward, p)
    ckpt = tmp_path / "cut" / "ckpt"
    assert (ckpt / K.LABELS_FILE).exists() and (ckpt / "checkpoint-1").is_dir()
    assert not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(K.common, "make_curves_callback", real)
    counting = Counting(reward)
    run(tiny_dir, prompts, tmp_path / "cut", counting, p)
    assert "resuming from" in capsys.readouterr().out
    assert counting.scored == 0  # the labelled set is reused: nothing sampled or scored again
    for f in ("model.safetensors", K.LABELS_FILE):
        assert (tmp_path / "cut" / "model" / f).read_bytes() == (tmp_path / "whole" / "model" / f).read_bytes()


def test_a_budget_that_is_no_multiple_of_the_samples_or_exceeds_the_prompts_is_one_clear_error(
        tiny_dir, prompts, reward, tmp_path):
    with pytest.raises(DetoxError, match=r"scored_responses \(7\) must be a positive multiple"):
        run(tiny_dir, prompts, tmp_path / "a", reward, scored_responses=7)
    with pytest.raises(DetoxError, match="8 prompts, fewer than the 10"):
        run(tiny_dir, prompts, tmp_path / "b", reward, scored_responses=20)
