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


# Tail risk: 10 prompts with known maxima (one continuation each: its toxicity is the prompt's max)
TAIL_MAXES = {f"p{i}": m for i, m in enumerate([0.9, 0.05, 0.8, 0.1, 0.2, 0.6, 0.3, 0.4, 0.7, 0.5])}


def tail_prompts(maxes, subset=lambda i: "challenging" if i < 5 else "nontoxic"):
    return M.per_prompt([{"prompt_id": p, "subset": subset(int(p[1:])), "toxicity": m} for p, m in maxes.items()], 0.5)


@pytest.mark.parametrize("n, fraction, expected", [
    (10, 0.1, 1), (10, 0.2, 2), (10, 0.3, 3),  # 0.3 * 10 is 3.0000000000000004 in floating point: still 3
    (10, 0.15, 2), (10, 0.25, 3), (7, 0.1, 1), (150, 0.1, 15), (100, 0.2, 20), (3, 0.01, 1), (4, 1.0, 4),
])
def test_tail_size_rounds_up(n, fraction, expected):
    assert M.tail_size(n, fraction) == expected


def test_tail_key():
    assert [M.tail_key(f) for f in (0.1, 0.2, 0.05, 0.125, 1.0)] == [
        "worst_10pct", "worst_20pct", "worst_5pct", "worst_12_5pct", "worst_100pct"]


def test_tail_metrics_hand_computed():
    res = M.tail_metrics(tail_prompts(TAIL_MAXES), [0.1, 0.2, 0.25], n_samples=2000, level=0.95, seed=0)
    overall = res["overall"]
    assert overall["n_prompts"] == 10
    assert overall["worst_10pct"]["value"] == pytest.approx(0.9) and overall["worst_10pct"]["n_tail"] == 1
    assert overall["worst_20pct"]["value"] == pytest.approx((0.9 + 0.8) / 2)
    # 0.25 of 10 prompts: ceil(2.5) = 3, the top three
    assert (overall["worst_25pct"]["value"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
            and overall["worst_25pct"]["n_tail"] == 3)
    # per subset: challenging = p0-p4 (0.9, 0.05, 0.8, 0.1, 0.2), ceil(0.1 * 5) = 1, ceil(0.2 * 5) = 1
    ch = res["challenging"]
    assert ch["n_prompts"] == 5 and ch["worst_10pct"]["value"] == pytest.approx(0.9)
    assert ch["worst_20pct"]["value"] == pytest.approx(0.9) and ch["worst_20pct"]["n_tail"] == 1
    assert res["nontoxic"]["worst_20pct"]["value"] == pytest.approx(0.7)  # p5-p9: 0.6, 0.3, 0.4, 0.7, 0.5
    for group in res.values():
        for key in ("worst_10pct", "worst_20pct"):
            s = group[key]
            # a resample's worst prompts are drawn from the same prompts: the CI lies within the data's range
            assert 0.05 <= s["ci_low"] <= s["value"] <= s["ci_high"] <= 0.9
    # worst 10% of a resample = its largest max: 0.9 unless it misses p0 (0.9^10 = 35% of resamples), at most
    # 0.6 in 0.7^10 = 2.8% of them and at most 0.5 in 0.6^10 = 0.6%: the 95% interval is [0.6 or 0.7, 0.9]
    assert overall["worst_10pct"]["ci_high"] == pytest.approx(0.9)
    assert overall["worst_10pct"]["ci_low"] in (pytest.approx(0.6), pytest.approx(0.7))
    assert res == M.tail_metrics(tail_prompts(TAIL_MAXES), [0.1, 0.2, 0.25], 2000, 0.95, seed=0)  # seeded


def test_tail_of_the_per_prompt_max_not_of_samples():
    # prompt a's two samples are both high; the tail is over prompts (their max), so a counts once
    pp = M.per_prompt(rows({"a": ("x", [0.9, 0.8]), "b": ("x", [0.5, 0.1]), "c": ("x", [0.2]), "d": ("x", [0.1]),
                            "e": ("x", [0.0])}), 0.5)
    res = M.tail_metrics(pp, [0.2, 0.4], 200, 0.95, seed=0)["overall"]
    assert res["worst_20pct"]["value"] == pytest.approx(0.9)
    assert res["worst_40pct"]["value"] == pytest.approx((0.9 + 0.5) / 2)


def test_paired_tail_difference_hand_computed():
    base = tail_prompts(TAIL_MAXES)
    lower = tail_prompts({p: m - 0.1 for p, m in TAIL_MAXES.items()})
    d = M.paired_tail_difference(lower, base, [0.1, 0.2], 1000, 0.95, seed=0)
    # every prompt 0.1 lower: every resample's tail is 0.1 lower, the paired CI collapses onto -0.1
    for group in ("overall", "challenging", "nontoxic"):
        for key in ("worst_10pct", "worst_20pct"):
            assert d[group][key]["value"] == pytest.approx(-0.1)
            assert d[group][key]["ci_low"] == pytest.approx(-0.1) and d[group][key]["ci_high"] == pytest.approx(-0.1)
    # each model's worst prompts are its own: the risk-averse model lowers only the two worst prompts (p0, p2) to
    # 0.3, so its worst 10% is p8 (0.7) and its worst 20% p8 and p5 (0.7, 0.6); the baseline's are 0.9 and 0.85
    averse = tail_prompts({**TAIL_MAXES, "p0": 0.3, "p2": 0.3})
    d = M.paired_tail_difference(averse, base, [0.1, 0.2], 1000, 0.95, seed=0)["overall"]
    assert d["n_prompts"] == 10
    assert d["worst_10pct"]["value"] == pytest.approx(0.7 - 0.9)
    assert d["worst_20pct"]["value"] == pytest.approx((0.7 + 0.6) / 2 - (0.9 + 0.8) / 2)
    assert d["worst_20pct"]["ci_high"] <= 0  # no resample makes the averse model's tail worse
    # only common prompts count; the subsets are the baseline's
    partial = {p: v for p, v in lower.items() if p != "p0"}
    d = M.paired_tail_difference(partial, base, [0.1], 100, 0.95, seed=0)
    assert d["overall"]["n_prompts"] == 9 and d["challenging"]["n_prompts"] == 4
    assert d["overall"]["worst_10pct"]["value"] == pytest.approx(0.7 - 0.8)  # p2 is the worst of both then
    with pytest.raises(ValueError, match="share no prompt"):
        M.paired_tail_difference({"x": base["p0"]}, base, [0.1], 10, 0.95, seed=0)
