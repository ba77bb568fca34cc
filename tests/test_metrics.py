import numpy as np
import pytest

from detoxrl.evaluation import metrics as M


def rows(spec):
    """spec: {prompt_id: (subset, [toxicities])}"""
    return [{"prompt_id": p, "subset": s, "toxicity": t} for p, (s, ts) in spec.items() for t in ts]


SPEC = {
    "a": ("challenging", [0.9, 0.1, 0.2]),
    "b": ("challenging", [0.3, 0.4, 0.2]),
    "c": ("nontoxic", [0.0, 0.6, 0.0]),
    "d": ("nontoxic", [0.1, 0.1, 0.1]),
}


def test_per_prompt_and_rtp_metrics_hand_computed():
    pp = M.per_prompt(rows(SPEC), threshold=0.5)
    assert pp["a"] == {"subset": "challenging", "max": 0.9, "any_toxic": 1.0, "mean": pytest.approx(0.4)}
    assert pp["d"]["any_toxic"] == 0.0
    res = M.toxicity_metrics(pp, n_samples=2000, level=0.95, seed=0)
    overall = res["overall"]
    assert overall["n_prompts"] == 4
    assert overall["expected_max_toxicity"]["value"] == pytest.approx((0.9 + 0.4 + 0.6 + 0.1) / 4)
    assert overall["toxicity_probability"]["value"] == pytest.approx(0.5)
    assert overall["mean_toxicity"]["value"] == pytest.approx(np.mean([0.4, 0.3, 0.2, 0.1]))
    assert res["challenging"]["expected_max_toxicity"]["value"] == pytest.approx(0.65)
    assert res["nontoxic"]["toxicity_probability"]["value"] == pytest.approx(0.5)
    for stat in overall.values():
        if isinstance(stat, dict):
            assert stat["ci_low"] <= stat["value"] <= stat["ci_high"]
    # bootstrap bounds can't leave the range of per-prompt values
    assert overall["expected_max_toxicity"]["ci_low"] >= 0.1 and overall["expected_max_toxicity"]["ci_high"] <= 0.9


def test_bootstrap_is_seeded_and_narrows_with_more_prompts():
    rng = np.random.default_rng(1)
    small = rng.random((20, 1))
    big = rng.random((2000, 1))
    a = M.bootstrap_means(small, 500, 0.95, seed=3)
    assert a == M.bootstrap_means(small, 500, 0.95, seed=3)
    b = M.bootstrap_means(big, 500, 0.95, seed=3)
    assert (b[0]["ci_high"] - b[0]["ci_low"]) < (a[0]["ci_high"] - a[0]["ci_low"]) / 5


def test_paired_difference_detects_a_consistent_drop():
    base = {f"p{i}": {"subset": "x", "max": 0.5 + 0.4 * (i % 2), "any_toxic": 1.0, "mean": 0.5} for i in range(50)}
    better = {k: {**v, "max": v["max"] - 0.1, "any_toxic": 0.0} for k, v in base.items()}
    d = M.paired_difference(better, base, 1000, 0.95, seed=0)
    assert d["expected_max_toxicity"]["value"] == pytest.approx(-0.1)
    # every prompt drops by exactly 0.1: the paired CI collapses onto it (an unpaired one would not)
    assert d["expected_max_toxicity"]["ci_high"] == pytest.approx(-0.1)
    assert d["toxicity_probability"]["value"] == pytest.approx(-1.0)


def test_distinct_n():
    texts = {"p": ["a b a b", "a b c"]}
    # unigrams: a b a b a b c -> 3 unique / 7; bigrams: ab ba ab ab bc -> 3 unique / 5
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert M.distinct_n({"p": ["", "x"]}, 2) == 0.0


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
    assert M.split_thinking(text, delim) == expected
