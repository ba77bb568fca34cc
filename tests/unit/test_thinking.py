"""Reasoning models (`thinking:`): the answer after the delimiter is what every reward and judge scores, an unclosed
thinking gets its treatment, and each stage counts the unclosed responses. The R1 stand-in: tests/support/tiny.py
build_tiny_qwen2_r1 (a tiny random Qwen2 whose chat template opens `<think>\\n`)."""

import json

import pytest
import yaml
from conftest import ROOT
from tiny import build_tiny_qwen2_r1

from detoxrl.evaluation.generate import sample_continuations, thinking_cut
from detoxrl.schema import Params
from detoxrl.scoring import ScoreCache, make_judge
from detoxrl.scoring.rewards import ToxicityReward, make_reward
from detoxrl.scoring.thinking import ThinkingReward, split_thinking

TOXIC, CLEAN = "fuck you, you stupid piece of shit", "thanks, that sounds lovely"


@pytest.mark.parametrize(
    "text, delim, expected",
    [
        ("<think>hmm, rude?</think> Sure, here it is.", "</think>", ("hmm, rude?", "Sure, here it is.")),
        ("<think>still thinking", "</think>", ("still thinking", "")),
        ("plain answer", None, ("", "plain answer")),
        ("reasoning ### answer", "###", ("reasoning", "answer")),
    ],
)
def test_split_thinking(text, delim, expected):
    assert split_thinking(text, delim) == expected


def params(tmp_path, **thinking) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["judges"]["cache_dir"] = str(tmp_path / "cache")
    data["ppo"]["reward"].update(source="toxicity", judge="offline")
    data["thinking"].update(thinking)
    return Params.model_validate(data)


def test_reward_scores_the_answer_only_and_gives_unclosed_thinking_the_penalty(tmp_path):
    reward = make_reward(params(tmp_path, delimiter="</think>", unclosed="penalty", unclosed_penalty=-0.75))
    assert isinstance(reward, ThinkingReward) and reward.judges == ["offline"]
    responses = [f"{TOXIC}</think> {CLEAN}", f"fine</think> {TOXIC}", f"{TOXIC} and still going"]
    got = reward.score(["p"] * 3, responses)
    alone = ToxicityReward(make_judge("offline", params(tmp_path).judges), ScoreCache(tmp_path / "cache2"))
    assert got[:2] == alone.score(["p"] * 2, [CLEAN, TOXIC])  # the judge saw the answers, not the thinking
    assert got[0] > 0.5 > got[1]  # a clean answer after toxic thinking, a toxic answer after clean thinking
    assert got[2] == -0.75
    assert reward.last_closed == [True, True, False] and (reward.unclosed, reward.scored) == (1, 3)


def test_reward_judges_unclosed_thinking_as_is(tmp_path):
    reward = make_reward(params(tmp_path, delimiter="</think>", unclosed="judge_as_is"))
    alone = ToxicityReward(make_judge("offline", params(tmp_path).judges), ScoreCache(tmp_path / "cache2"))
    assert reward.score(["p"], [f"<think>{TOXIC}"]) == alone.score(["p"], [TOXIC])


def test_without_a_delimiter_the_reward_is_the_plain_source(tmp_path):
    reward = make_reward(params(tmp_path))
    assert isinstance(reward, ToxicityReward)
    with pytest.raises(ValueError, match="max_tokens needs a delimiter"):
        params(tmp_path, max_tokens=8)


def test_thinking_cut_keeps_the_answer_budget_after_the_delimiter():
    d = [9]
    assert thinking_cut([1, 2, 9, 3, 4, 5, 6], d, budget=4, answer_tokens=2) == 5  # closed at 3: 2 answer tokens
    assert thinking_cut([1, 2, 3, 4, 9, 5, 6], d, budget=4, answer_tokens=2) == 4  # closed too late: unclosed
    assert thinking_cut([1, 9, 5], d, budget=4, answer_tokens=2) == 3  # ended (EOS) before its answer budget
    assert thinking_cut([1, 8, 9, 5, 6, 7], [8, 9], budget=3, answer_tokens=1) == 4  # a two-token delimiter


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory):
    return build_tiny_qwen2_r1(tmp_path_factory.mktemp("r1") / "model")


def test_generate_gives_the_thinking_its_budget_and_the_answer_max_new_tokens(r1_dir, tmp_path):
    from detoxrl.models.load import load_for_inference

    p = params(tmp_path, delimiter="</think>", max_tokens=12)
    model, tok = load_for_inference(r1_dir, r1_dir)
    gen = p.generate.model_copy(update={"k": 8, "max_new_tokens": 3, "batch_size": 16})
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
               for c in ("you are", "what the")]
    samples = [s for ss in sample_continuations(model, tok, prompts, gen, progress=False, thinking=p.thinking)
               for s in ss]
    closed = [s for s in samples if "</think>" in s["text"]]
    assert closed and len(closed) < len(samples)  # the stand-in closes some thinking and not the rest
    think_id = tok.convert_tokens_to_ids("</think>")
    for s in samples:
        ids = tok(s["text"], add_special_tokens=False)["input_ids"]
        if think_id in ids:
            assert ids.index(think_id) < 12 and len(ids) - ids.index(think_id) - 1 <= 3
        else:
            assert len(ids) <= 12 and (s["eos"] or s["n_tokens"] == 12)


def test_ppo_on_the_r1_stand_in_counts_unclosed_thinking(r1_dir, tmp_path):
    from ppo_helpers import ppo_params

    from detoxrl.training import ppo as P

    prompts = tmp_path / "ppo_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "subset": "x", "text": w}) + "\n"
                               for i, w in enumerate(["you are", "what the", "she said", "why"] * 4)))
    p = params(tmp_path, delimiter="</think>", unclosed="penalty", unclosed_penalty=-1.0)
    seen = []

    class Recording(ThinkingReward):
        def score(self, prompts, responses):
            seen.append(responses)
            return super().score(prompts, responses)

    reward = make_reward(p)
    reward = Recording(reward.inner, "</think>", "penalty", -1.0)
    final = P.train_ppo(r1_dir, r1_dir, prompts, tmp_path / "out", tmp_path / "ppo.json", tmp_path / "plots",
                        tmp_path / "ckpt", ppo_params(steps=2, max_new_tokens=24), reward,
                        lambda text, tok: tok.apply_chat_template([{"role": "user", "content": text}],
                                                                  add_generation_prompt=True, tokenize=False),
                        progress=False)
    unclosed = sum("</think>" not in r for batch in seen for r in batch)
    assert len(seen) == 2 and 0 < unclosed < 32  # some of the 2 x 16 responses closed within 24 tokens
    assert final["unclosed_thinking"] == {"count": unclosed, "fraction": unclosed / 32, "responses": 32}
    assert final["thinking_unclosed"] == sum("</think>" not in r for r in seen[-1])  # the last step's
    assert json.loads((tmp_path / "ppo.json").read_text())["unclosed_thinking"]["count"] == unclosed


def test_chat_eval_on_the_r1_stand_in_counts_unclosed_thinking_and_scores_it_one(r1_dir, tmp_path):
    from detoxrl.evaluation.chat_eval import chat_eval
    from detoxrl.io import read_jsonl, write_jsonl

    inputs = [("toxic", "you are"), ("nontoxic", "hello"), ("jailbreaking", "x")]
    write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"c{i}", "category": c, "text": t}
                                            for i, (c, t) in enumerate(inputs)])
    p = params(tmp_path, delimiter="</think>", unclosed="penalty", max_tokens=10)
    # a second judge that runs anywhere: an ensemble of the offline judge alone, with an identity calibration in a
    # judges dir of this test's own (every judge scores the answers)
    from detoxrl.scoring.offline import OfflineJudge

    trained = tmp_path / "judge"
    trained.mkdir()
    (trained / "calibration.json").write_text(json.dumps(
        {"offline": {"version": OfflineJudge().version, "x": [0.0, 1.0], "y": [0.0, 1.0], "n_texts": 2}}))
    judges = p.judges.model_copy(update={"ensemble": p.judges.ensemble.model_copy(update={"members": ["offline"]}),
                                         "trained_dir": str(trained), "chat_dir": str(tmp_path / "no-chat-judge")})
    p = p.model_copy(update={"chat_eval": p.chat_eval.model_copy(update={
        "judge": "offline", "judges": ["ensemble"], "k": 6, "max_new_tokens": 3}), "judges": judges})
    res = chat_eval("r1", r1_dir, r1_dir, tmp_path / "prompts.jsonl", tmp_path / "a.jsonl", tmp_path / "m.json", p)
    rows = read_jsonl(tmp_path / "a.jsonl")
    unclosed = [r for r in rows if "</think>" not in r["text"]]
    assert 0 < len(unclosed) < len(rows) == 18
    assert res["unclosed_thinking"] == {"count": len(unclosed), "fraction": len(unclosed) / 18, "responses": 18,
                                        "treatment": "penalty"}
    assert all(r["toxicity"] == 1.0 and r["answer"] == "" and not r["thinking_closed"] for r in unclosed)
    assert all(r["judges"]["ensemble"] == 1.0 for r in unclosed) and "skipped" not in res["by_judge"]["ensemble"]
    assert all(r["answer"] == r["text"].split("</think>", 1)[1].strip() for r in rows if r["thinking_closed"])
