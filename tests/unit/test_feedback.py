"""The preference feedback loop's first part: on-policy pools (pref_gen), AI labels (label_ai), DPO on them."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from detoxrl import DetoxError
from detoxrl.io import read_jsonl, write_jsonl
from detoxrl.schema import load_params
from detoxrl.training.label_ai import label_ai
from detoxrl.training.pref_gen import draw_pools, pref_gen

DEFAULTS = load_params(ROOT / "params.yaml")


def prompts(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "subset": "challenging", "text": f"{prefix} prompt number {i} says"}
            for i in range(n)]


def test_pools_are_disjoint_seeded_and_never_eval_prompts():
    pool = prompts(20)
    ai, human = draw_pools(pool, prompts(3, "eval"), 8, 5, seed=0)
    assert len(ai) == 8 and len(human) == 5 and not {r["id"] for r in ai} & {r["id"] for r in human}
    assert (ai, human) == draw_pools(pool, [], 8, 5, seed=0) and ai != draw_pools(pool, [], 8, 5, seed=1)[0]
    with pytest.raises(DetoxError, match="are eval prompts"):
        draw_pools(pool, [{"id": "other", "text": pool[4]["text"]}], 8, 5, seed=0)
    with pytest.raises(DetoxError, match="only 20 training prompts"):
        draw_pools(pool, [], 15, 6, seed=0)


def test_pref_gen_samples_n_responses_per_prompt_for_both_pools(base_model_dir, tmp_path):
    from tiny import build_tiny_model

    model = build_tiny_model(base_model_dir, tmp_path / "tiny")
    write_jsonl(tmp_path / "prompts.jsonl", prompts(12))
    write_jsonl(tmp_path / "eval.jsonl", prompts(2, "eval"))
    p = DEFAULTS.pref_gen.model_copy(update={"ai_prompts": 5, "human_prompts": 3, "n": 3, "max_new_tokens": 4})
    m = pref_gen(model, model, tmp_path / "prompts.jsonl", tmp_path / "eval.jsonl", tmp_path / "out",
                 tmp_path / "m.json", p, DEFAULTS.generate)
    ai, human = read_jsonl(tmp_path / "out" / "ai_pool.jsonl"), read_jsonl(tmp_path / "out" / "human_pool.jsonl")
    assert (len(ai), len(human)) == (5, 3) and all(len(r["responses"]) == 3 for r in ai + human)
    assert not {r["id"] for r in ai} & {r["id"] for r in human}
    assert m["ai"] == {"prompts": 5, "responses": 15} and json.loads((tmp_path / "m.json").read_text())["n"] == 3


def test_label_ai_prefers_the_less_toxic_response_and_drops_ties(tmp_path):
    pool = [
        {"id": "a", "prompt": "He said", "responses": ["you are a stupid fucking idiot", "have a lovely day"]},
        {"id": "b", "prompt": "She said", "responses": ["thank you so much", "thank you so much"]},  # no preference
        {"id": "c", "prompt": "They", "responses": ["went home", "are shit and fuck off", "like tea"]},
    ]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    params = DEFAULTS.model_copy(update={
        "label_ai": DEFAULTS.label_ai.model_copy(update={"graders": ["offline"], "min_margin": 0.01,
                                                         "val_fraction": 0.0}),
        "judges": DEFAULTS.judges.model_copy(update={"cache_dir": str(tmp_path / "cache")})})
    m = label_ai(tmp_path / "pool.jsonl", tmp_path / "out", tmp_path / "m.json", params)
    pairs = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "ai_labels.jsonl")}
    assert set(pairs) == {"a", "c"} and m["dropped_below_margin"] == 1 and m["pairs"] == 2
    assert pairs["a"]["chosen"] == "have a lovely day" and pairs["a"]["rejected"] == "you are a stupid fucking idiot"
    assert pairs["c"]["rejected"] == "are shit and fuck off"  # best against worst of three
    assert pairs["a"]["prompt"] == "He said" and pairs["a"]["grader"] == "offline" and pairs["a"]["margin"] > 0.01
    assert m["grader_queries"] == 7 and m["agreement"] == {}
    with pytest.raises(DetoxError, match="at least 2 responses"):
        write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "prompt": "p", "responses": ["only one"]}])
        label_ai(tmp_path / "bad.jsonl", tmp_path / "out2", tmp_path / "m2.json", params)


def test_dpo_trains_on_raw_text_pairs_and_names_the_judge_in_its_labels(base_model_dir, tmp_path):
    from tiny import build_tiny_model

    from detoxrl.training.dpo import to_preference, train_dpo

    model = build_tiny_model(base_model_dir, tmp_path / "tiny")
    pairs = [{"id": f"p{i}", "prompt": f"The {w} said", "chosen": " thank you", "rejected": " shut up idiot",
              "margin": 0.5, "grader": "perspective_distilled"} for i, w in enumerate(["man", "cat", "dog", "kid"])]
    assert to_preference(pairs[0]) == {"prompt": "The man said", "chosen": " thank you", "rejected": " shut up idiot"}
    write_jsonl(tmp_path / "train.jsonl", pairs)
    write_jsonl(tmp_path / "val.jsonl", pairs[:2])
    p = DEFAULTS.dpo_feedback.model_copy(update={"max_steps": 2, "batch_size": 2, "logging_steps": 1,
                                                 "save_steps": 100, "eval_steps": 2,
                                                 "checkpoint_dir": str(tmp_path / "ckpt")})
    m = train_dpo(model, model, tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "out",
                  tmp_path / "m.json", tmp_path / "plots", p)
    assert m["steps"] == 2 and m["pairs_seen"] == 4 and m["judges_in_reward"] == ["perspective_distilled"]
    assert (tmp_path / "out" / "model.safetensors").exists() and m["train_seconds"] > 0
