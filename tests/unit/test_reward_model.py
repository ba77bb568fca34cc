"""Reward model: the pairwise loss TRL trains with, accuracy with ties, RM scoring (batch-size independence),
reward sources and their ranges, hub-RM input formats (tiny Qwen3 and DeBERTa-v2 RMs built here), and a short
real run of the reward_model and eval_reward_model stages on a tiny model."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_sft_dpo import data  # noqa: F401  (the fixture: short real HH-RLHF pairs)
from tiny import build_tiny_deberta, build_tiny_seqcls
from transformers import AutoTokenizer

from detoxrl import DetoxError
from detoxrl.evaluation.reward_eval import bucket_names, evaluate_reward_model, pair_accuracy
from detoxrl.schema import load_params
from detoxrl.scoring import make_judge
from detoxrl.scoring.reward_models import RewardModelScorer, chat_ids
from detoxrl.scoring.rewards import CompositeReward, RewardModelReward, RunningMoments, ToxicityReward, make_reward
from detoxrl.training.reward_model import tokenize_pair, train_reward_model

DEFAULTS = load_params(ROOT / "params.yaml")
PROMPTS = ["How do I bake bread?", "Tell me about cats", "hi", "Why is the sky blue? Explain it in detail please."]
RESPONSES = ["Mix flour, water and yeast, then bake.", "You idiot, figure it out yourself.", "hello there",
             "Rayleigh scattering makes short wavelengths scatter more."]


def tiny_seqcls(tmp_path, tokenizer_dir, arch: str = "llama", seed: int = 0):
    return build_tiny_seqcls(tokenizer_dir, tmp_path / f"rm-{arch}", arch, seed)


def tiny_deberta(tmp_path):
    return build_tiny_deberta(tmp_path / "rm-deberta", PROMPTS + RESPONSES)


@pytest.fixture(scope="module")
def rm_dir(base_model_dir, tmp_path_factory):
    return tiny_seqcls(tmp_path_factory.mktemp("rm"), base_model_dir)


# --- the loss TRL trains with ------------------------------------------------------------------------------


def test_reward_trainer_loss_is_bradley_terry_with_margin_and_centering(rm_dir, tmp_path):
    """TRL's RewardTrainer loss on one batch equals the hand-written formula with our margin and centering
    params: -log sigmoid(r_c - r_r - m) averaged, + c * mean((r_c + r_r)^2)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    pairs = [{"prompt": [{"role": "user", "content": p}], "chosen": RESPONSES[0], "rejected": r}
             for p, r in zip(PROMPTS[:3], RESPONSES[1:])]
    rows = [{**tokenize_pair(p, tok, "chat", 1, 128), "margin": 0.5} for p in pairs]
    args = RewardConfig(output_dir=str(tmp_path / "out"), center_rewards_coefficient=0.1, report_to="none", bf16=False,
                        per_device_train_batch_size=3, remove_unused_columns=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
        scorer = RewardModelScorer(str(rm_dir), "chat", batch_size=8, max_length=128)
        r_c = np.array(scorer.score_ids([r["chosen_ids"] for r in rows]))
        r_r = np.array(scorer.score_ids([r["rejected_ids"] for r in rows]))
    expected = np.mean(np.log1p(np.exp(-(r_c - r_r - 0.5)))) + 0.1 * np.mean((r_c + r_r) ** 2)
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # a case worked by hand: the score head zeroed, so r_c = r_r = 0 and the centering term is 0; with margin 0.5,
    # -log sigmoid(0 - 0 - 0.5) = log(1 + e^0.5) = 0.974077
    with torch.no_grad():
        trainer.model.score.weight.zero_()
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.974077, abs=1e-5)


def test_pair_accuracy_counts_ties_as_half():
    acc = pair_accuracy(np.array([1.0, 0.0, 2.0, 5.0]), np.array([0.0, 0.0, 3.0, 1.0]), 200, 0.95, 0)
    assert acc["value"] == pytest.approx((1 + 0.5 + 0 + 1) / 4) and acc["n"] == 4
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert pair_accuracy(np.array([]), np.array([]), 200, 0.95, 0)["value"] is None
    assert bucket_names([64, 128]) == ["<64", "64-127", ">=128"]


# --- scoring ------------------------------------------------------------------------------------------------


def test_rm_scores_are_deterministic_and_batch_size_independent(rm_dir):
    one = RewardModelScorer(str(rm_dir), "auto", batch_size=1).score(PROMPTS, RESPONSES)
    three = RewardModelScorer(str(rm_dir), "auto", batch_size=3).score(PROMPTS, RESPONSES)
    assert np.allclose(one, three, atol=1e-5)
    assert RewardModelScorer(str(rm_dir), "auto", batch_size=3).score(PROMPTS, RESPONSES) == three
    assert len(set(np.round(one, 6))) == len(one)  # distinct inputs, distinct rewards: the head reads each row


def test_rm_reads_the_last_real_token_even_when_the_pad_token_ends_the_text(rm_dir):
    """SmolLM2's pad token is <|im_end|>; a row whose text ends with it must still be read at its end."""
    scorer = RewardModelScorer(str(rm_dir), "chat", batch_size=2)
    pad = scorer.tokenizer.pad_token_id
    short, long = [5, 6, pad], [5, 6, 7, 8, 9, pad]
    batched = scorer.score_ids([short, long])
    alone = [scorer.score_ids([short])[0], scorer.score_ids([long])[0]]
    assert np.allclose(batched, alone, atol=1e-5)


def test_chat_format_for_a_qwen3_rm_uses_its_own_template(base_model_dir, tmp_path):
    """Skywork-Reward-V2 style: a Qwen3 sequence classifier reading [user, assistant] via its chat template; the
    score equals the model's own output on the unpadded conversation (the model card's usage)."""
    path = tiny_seqcls(tmp_path, base_model_dir, "qwen3")
    scorer = RewardModelScorer(str(path), "auto", batch_size=4)
    assert scorer.format == "chat"
    tok = scorer.tokenizer
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello there<|im_end|>\n"
    assert scorer.encode("hi", "hello there") == tok(text, add_special_tokens=False)["input_ids"]
    scores = scorer.score(PROMPTS, RESPONSES)
    for p, r, s in zip(PROMPTS, RESPONSES, scores):
        conv = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert s == pytest.approx(scorer.model(**ids).logits[0, 0].item(), abs=1e-5)


def test_pair_format_for_a_deberta_rm(tmp_path):
    """OpenAssistant's DeBERTa RM: tokenizer(question, answer), no chat template; scores match the unpadded
    single-pair forward pass at any batch size."""
    path = tiny_deberta(tmp_path)
    scorer = RewardModelScorer(str(path), "auto", batch_size=3)
    assert scorer.format == "pair"
    tok = scorer.tokenizer
    ids = scorer.encode("hi", "hello there")
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "hi", "[SEP]", "hello", "there", "[SEP]"]
    scores = scorer.score(PROMPTS, RESPONSES)
    for p, r, s in zip(PROMPTS, RESPONSES, scores):
        with torch.no_grad():
            assert s == pytest.approx(scorer.model(**tok(p, r, return_tensors="pt")).logits[0, 0].item(), abs=1e-5)


def test_rm_errors_are_one_sentence(tmp_path):
    with pytest.raises(DetoxError, match="directory not found"):
        RewardModelScorer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetoxError, match="could not be loaded"):
        RewardModelScorer(str(tmp_path / "empty"))


# --- reward sources -----------------------------------------------------------------------------------------


def test_reward_sources_ranges_and_composite(rm_dir):
    tox = ToxicityReward(make_judge("offline", DEFAULTS.judges), None)
    t = tox.score(PROMPTS, RESPONSES)
    assert all(0.0 <= v <= 1.0 for v in t) and t[1] < t[0]  # the insult is the least rewarded
    rm = RewardModelReward(RewardModelScorer(str(rm_dir), "chat", batch_size=4))
    r = rm.score(PROMPTS, RESPONSES)
    assert all(math.isfinite(v) for v in r) and rm.judges == []

    plain = CompositeReward({"toxicity": tox, "reward_model": rm}, {"toxicity": 2.0, "reward_model": 0.5}, False)
    assert np.allclose(plain.score(PROMPTS, RESPONSES), [2 * a + 0.5 * b for a, b in zip(t, r)])
    assert plain.judges == ["offline"] and "toxicity:offline" in plain.name

    normed = CompositeReward({"toxicity": tox, "reward_model": rm}, {"toxicity": 1.0, "reward_model": 1.0}, True)
    first = np.array(normed.score(PROMPTS, RESPONSES))
    zt = (np.array(t) - np.mean(t)) / np.std(t, ddof=1)  # first batch: standardised by its own statistics
    zr = (np.array(r) - np.mean(r)) / np.std(r, ddof=1)
    assert np.allclose(first, zt + zr, atol=1e-6) and abs(first.mean()) < 1e-6
    # a zero weight drops the component entirely (its model is never called)
    only_tox = CompositeReward({"toxicity": tox, "reward_model": rm}, {"toxicity": 1.0, "reward_model": 0.0}, False)
    assert list(only_tox.components) == ["toxicity"]


def test_running_moments_match_numpy():
    m, values = RunningMoments(), [0.3, 1.7, -2.0, 4.5, 0.0]
    m.update(values[:2])
    m.update(values[2:])
    assert m.mean == pytest.approx(np.mean(values)) and m.std == pytest.approx(np.std(values, ddof=1))


def test_make_reward_builds_each_source_from_params(rm_dir):
    for source, kind in (("toxicity", ToxicityReward), ("reward_model", RewardModelReward),
                         ("composite", CompositeReward)):
        reward = DEFAULTS.ppo.reward.model_copy(update={
            "source": source, "judge": "offline",  # the default judge needs models/judge (train_judge)
            "reward_model": DEFAULTS.ppo.reward.reward_model.model_copy(update={"model": str(rm_dir)})})
        params = DEFAULTS.model_copy(update={"ppo": DEFAULTS.ppo.model_copy(update={"reward": reward})})
        assert isinstance(make_reward(params), kind)


# --- the stages, on a tiny model ------------------------------------------------------------------------------


def test_reward_model_stage_trains_saves_and_evaluates(base_model_dir, data, tmp_path):  # noqa: F811  (the fixture from test_sft_dpo)
    from tiny import build_tiny_model

    tiny = build_tiny_model(base_model_dir, tmp_path / "tiny")
    params = DEFAULTS.reward_model.model_copy(update=dict(
        backbone=f"local:{tiny}", max_steps=3, batch_size=2, grad_accum=1, lr=1e-2, max_length=128,
        logging_steps=1, save_steps=100, warmup_ratio=0.0, eval_steps=100, eval_pairs=None,
        checkpoint_dir=str(tmp_path / "ckpt"), lora=DEFAULTS.reward_model.lora.model_copy(update={"enabled": True})))
    out = tmp_path / "reward"
    m = train_reward_model(base_model_dir, data / "pref_train.jsonl", data / "pref_val.jsonl", out,
                           tmp_path / "m.json", tmp_path / "plots", params)
    assert m["steps"] == 3 and 0.0 <= m["validation"]["accuracy"] <= 1.0 and m["context_turns"] == 1
    assert not (tmp_path / "ckpt").exists()
    assert (tmp_path / "plots" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    assert json.loads((out / "detoxrl_reward.json").read_text())["format"] == "chat"
    assert not (out / "adapter_config.json").exists()  # merged: loads as a plain sequence classifier
    # reproducible: a second run, with the global RNG elsewhere, trains the same model (its fresh head included)
    import torch
    torch.manual_seed(12345)
    again = train_reward_model(base_model_dir, data / "pref_train.jsonl", data / "pref_val.jsonl", tmp_path / "again",
                               tmp_path / "m2.json", tmp_path / "plots2", params)
    assert again["train_loss"] == m["train_loss"] and again["validation"] == m["validation"]

    # what the stage trained on is what the scorer reads: same ids for the same pair
    scorer = RewardModelScorer(str(out), "auto", batch_size=4, max_length=128)
    pair = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    assert tokenize_pair(pair, scorer.tokenizer, "chat", 1, 128)["chosen_ids"] == scorer.encode("hi", "a")

    params_all = DEFAULTS.model_copy(update={
        "eval_reward_model": DEFAULTS.eval_reward_model.model_copy(update={"batch_size": 3}),
        "reward_model": params,
        "evaluate": DEFAULTS.evaluate.model_copy(update={"bootstrap_samples": 100})})
    r = evaluate_reward_model(out, data / "pref_test.jsonl", tmp_path / "rm.json", tmp_path / "rmplots", params_all)
    assert "reward_bench" not in r  # no RewardBench file given
    assert r["pairs"] == 4 and 0.0 <= r["accuracy"]["value"] <= 1.0
    assert sum(b["n"] for b in r["by_prompt_length"].values()) == 4
    assert r["judge_agreement"]["judge"] == "offline"
    assert set(r["rewards"]) == {"chosen", "rejected", "all", "mean_margin"}
    lines = (tmp_path / "rmplots" / "rewards.csv").read_text().splitlines()
    assert lines[0] == "pair,response,reward" and len(lines) == 1 + 8
    assert (tmp_path / "rmplots" / "rewards.png").stat().st_size > 1000


def test_encoder_reward_model_trains_as_a_cross_encoder_and_is_benchmarked_on_reward_bench(data, raw_dir, tmp_path):  # noqa: F811  (the fixture from test_sft_dpo)
    """The packaged MiniLM as the RM backbone: trained in full on (question, answer) pairs, saved as a pair-format
    RM, read the same way by the scorer (its score in [0, 1] is the sigmoid of the reward), and scored on
    RewardBench (one pair per subset here), every section reported with its CI."""
    params = DEFAULTS.reward_model.model_copy(update=dict(
        backbone="packaged:all-minilm-l6-v2", max_steps=3, batch_size=2, grad_accum=1, lr=1e-4, max_length=64,
        logging_steps=1, save_steps=100, warmup_ratio=0.0, eval_steps=100, eval_pairs=None,
        checkpoint_dir=str(tmp_path / "ckpt")))
    out = tmp_path / "reward"
    m = train_reward_model("unused-for-encoders", data / "pref_train.jsonl", data / "pref_val.jsonl", out,
                           tmp_path / "m.json", tmp_path / "plots", params)
    assert m["format"] == "pair" and m["steps"] == 3 and m["trainable_parameters"] == m["parameters"]  # full FT
    assert json.loads((out / "detoxrl_reward.json").read_text())["format"] == "pair"
    scorer = RewardModelScorer(str(out), "auto", batch_size=4, max_length=64)
    assert scorer.format == "pair"
    pair = {"prompt": [{"role": "user", "content": "hi there"}], "chosen": "a", "rejected": "b"}
    ids = tokenize_pair(pair, scorer.tokenizer, "pair", 1, 64)["chosen_ids"]
    assert ids == scorer.encode("hi there", "a") == scorer.tokenizer("hi there", "a")["input_ids"]
    reward = scorer.score(["hi there"], ["a"])[0]
    assert scorer.probability(["hi there"], ["a"])[0] == pytest.approx(1 / (1 + math.exp(-reward)))

    rb = DEFAULTS.eval_reward_model.reward_bench.model_copy(update={"per_subset": 1, "full_sections": [],
                                                                    "max_length": 64})
    params_all = DEFAULTS.model_copy(update={
        "eval_reward_model": DEFAULTS.eval_reward_model.model_copy(update={"batch_size": 8, "reward_bench": rb}),
        "reward_model": params, "evaluate": DEFAULTS.evaluate.model_copy(update={"bootstrap_samples": 100})})
    r = evaluate_reward_model(out, data / "pref_test.jsonl", tmp_path / "rm.json", tmp_path / "rmplots", params_all,
                              raw_dir / "reward-bench" / "filtered.jsonl")
    bench = r["reward_bench"]["models/reward"]
    assert bench["pairs"] == 23 and bench["format"] == "pair"  # one pair from each of the 23 subsets
    assert set(bench["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert 0 < bench["truncated_pairs"] <= 23  # 64 tokens cut most RewardBench pairs, and they are counted
    for s in bench["sections"].values():
        assert s["ci"][0] <= s["value"] <= s["ci"][1]
    assert bench["score"]["value"] == pytest.approx(np.mean([s["value"] for s in bench["sections"].values()]))
    assert 0 < r["probability"]["chosen"] < 1
    rows = (tmp_path / "rmplots" / "reward_bench.csv").read_text().splitlines()
    assert rows[0] == "model,section,value,ci_low,ci_high,pairs" and len(rows) == 1 + 4


def test_a_deberta_backbone_trains_as_the_hub_deberta_v3_path_would(data, tmp_path):  # noqa: F811  (the fixture from test_sft_dpo)
    """`hub:microsoft/deberta-v3-base` needs the network; a tiny random DeBERTa-v2 (its architecture) stands in
    through `local:`: the same code trains it as a pair-format cross-encoder and the scorer reads it back."""
    params = DEFAULTS.reward_model.model_copy(update=dict(
        backbone=f"local:{tiny_deberta(tmp_path)}", max_steps=2, batch_size=2, grad_accum=1, lr=1e-3, max_length=64,
        logging_steps=1, save_steps=100, warmup_ratio=0.0, eval_steps=100, eval_pairs=2,
        checkpoint_dir=str(tmp_path / "ckpt")))
    m = train_reward_model("unused", data / "pref_train.jsonl", data / "pref_val.jsonl", tmp_path / "rm",
                           tmp_path / "m.json", tmp_path / "plots", params)
    assert m["format"] == "pair" and m["steps"] == 2
    scorer = RewardModelScorer(str(tmp_path / "rm"), "auto", batch_size=2, max_length=64)
    assert scorer.format == "pair" and len(scorer.score(PROMPTS[:2], RESPONSES[:2])) == 2


def test_pair_ids_cut_the_question_start_first_then_the_answer_end():
    from transformers import AutoTokenizer

    from detoxrl.scoring.encoder import packaged_model_dir
    from detoxrl.scoring.reward_models import pair_ids

    tok = AutoTokenizer.from_pretrained(packaged_model_dir()[0])
    q, a = "one two three four five six seven eight nine ten", "alpha beta gamma delta"
    assert tok.decode(pair_ids(tok, q, a, 10)) == "[CLS] eight nine ten [SEP] alpha beta gamma delta [SEP]"
    long_answer = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    cut = pair_ids(tok, "one two", long_answer, 10)
    assert len(cut) == 10 and tok.decode(cut).startswith("[CLS] two [SEP] alpha beta")  # the question keeps its end
    assert pair_ids(tok, "one two", "alpha", 10) == tok("one two", "alpha")["input_ids"]  # short: untouched


def test_reward_model_quantization_without_cuda_is_one_sentence(base_model_dir, data, tmp_path):  # noqa: F811  (the fixture from test_sft_dpo)
    params = DEFAULTS.reward_model.model_copy(update={"quantization": "4bit"})
    with pytest.raises(DetoxError, match="reward_model.quantization: 4bit .* needs a CUDA GPU"):
        train_reward_model(base_model_dir, data / "pref_train.jsonl", data / "pref_val.jsonl", tmp_path / "o",
                           tmp_path / "m.json", tmp_path / "p", params)
    assert not (tmp_path / "o").exists()


def test_chat_ids_keep_the_end_when_too_long(base_model_dir):
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    full = chat_ids(tok, [{"role": "user", "content": "word " * 50}], "the answer")
    cut = chat_ids(tok, [{"role": "user", "content": "word " * 50}], "the answer", max_length=10)
    assert cut == full[-10:]
