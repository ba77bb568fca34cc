"""RewardBench scoring: section weights, ties, bootstrap CIs, loading and sampling (no models)."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from detoxrl import DetoxError
from detoxrl.evaluation.reward_bench import (EXAMPLE_COUNTS, SECTIONS, load_reward_bench, sample_pairs,
                                             score_summary)

README_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100, "refusals-offensive": 100,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 447,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}


def pairs(spec: dict[str, str]) -> tuple[list[dict], list[float], list[float]]:
    """Rows and scores from {subset: outcomes}, one character per pair: W chosen wins, L loses, T tie."""
    rows, chosen, rejected = [], [], []
    for subset, outcomes in spec.items():
        for outcome in outcomes:
            rows.append({"subset": subset})
            chosen.append({"W": 1.0, "L": -1.0, "T": 0.25}[outcome])
            rejected.append({"W": 0.0, "L": 0.0, "T": 0.25}[outcome])
    return rows, chosen, rejected


def summary(spec: dict[str, str], n_bootstrap: int = 200, seed: int = 0) -> dict:
    return score_summary(*pairs(spec), n_bootstrap=n_bootstrap, level=0.95, seed=seed)


def test_constants_match_rewardbench():
    assert sorted(s for subsets in SECTIONS.values() for s in subsets) == sorted(README_COUNTS)
    assert EXAMPLE_COUNTS["math-prm"] == 984 == 6 * EXAMPLE_COUNTS["hep-python"]
    assert {s: n for s, n in EXAMPLE_COUNTS.items() if s != "math-prm"} == {
        s: n for s, n in README_COUNTS.items() if s != "math-prm"}


def test_reasoning_upweights_math_to_equal_the_code_subsets():
    # math-prm 2/4 = 0.5, hep-cpp 1/1, hep-go 2/2; weights 984, 164, 164:
    # (0.5*984 + 1*164 + 1*164) / 1312 = 820/1312 = 0.625 (unweighted mean 0.8333, pooled pairs 5/7).
    out = summary({"math-prm": "WWLL", "hep-cpp": "W", "hep-go": "WW"})
    assert out["sections"]["Reasoning"]["value"] == 0.625
    assert out["sections"]["Reasoning"]["n"] == 7
    assert out["subsets"]["math-prm"] == {"accuracy": 0.5, "n": 4}
    # The brief's example: math 0.5 and code subsets at 1.0 and 0.0 -> (492 + 164 + 0) / 1312 = 0.5.
    assert summary({"math-prm": "WL", "hep-cpp": "W", "hep-go": "L"})["sections"]["Reasoning"]["value"] == 0.5


def test_chat_weights_subsets_by_example_count_and_score_averages_sections():
    # alpacaeval-easy 3/4 = 0.75 (weight 100), mt-bench-easy 1/2 = 0.5 (weight 28): (75 + 14) / 128 = 89/128.
    # Safety: donotanswer 1/4 = 0.25 alone. Score = mean of the two sections present.
    out = summary({"alpacaeval-easy": "WWWL", "mt-bench-easy": "WL", "donotanswer": "WLLL"})
    assert out["sections"]["Chat"]["value"] == 89 / 128
    assert out["sections"]["Safety"]["value"] == 0.25
    assert set(out["sections"]) == {"Chat", "Safety"}  # sections with no scored subset are left out
    assert out["score"]["value"] == pytest.approx((89 / 128 + 0.25) / 2, abs=1e-15)
    assert out["subsets"]["mt-bench-easy"] == {"accuracy": 0.5, "n": 2}


def test_a_tie_counts_as_wrong_like_rewardbench_run_rm():
    out = summary({"alpacaeval-easy": "WWTL"})
    assert out["subsets"]["alpacaeval-easy"]["accuracy"] == 0.5  # 2/4; ties-as-half would give 0.625
    assert summary({"alpacaeval-easy": "TTTT"})["subsets"]["alpacaeval-easy"]["accuracy"] == 0.0


def test_ci_contains_estimate_shrinks_with_more_pairs_and_is_seeded():
    small = summary({"alpacaeval-easy": "WWWL" * 5, "hep-go": "WL" * 5})
    large = summary({"alpacaeval-easy": "WWWL" * 500, "hep-go": "WL" * 500})
    for out in (small, large):
        for block in (*out["sections"].values(), out["score"]):
            lo, hi = block["ci"]
            assert lo <= block["value"] <= hi
            assert lo < hi
    assert small["sections"]["Chat"]["value"] == large["sections"]["Chat"]["value"] == 0.75
    width = {name: np.diff(out["score"]["ci"])[0] for name, out in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 5  # 100x the pairs: about a tenth of the width
    again = summary({"alpacaeval-easy": "WWWL" * 5, "hep-go": "WL" * 5})
    assert again == small
    assert summary({"alpacaeval-easy": "WWWL" * 5, "hep-go": "WL" * 5}, seed=1)["score"]["ci"] != small["score"]["ci"]
    # Stratified: a subset that is all wins stays at exactly 1 in every resample.
    assert summary({"alpacaeval-easy": "W" * 30})["sections"]["Chat"]["ci"] == [1.0, 1.0]


def test_bootstrap_is_fast_on_a_full_size_run():
    spec = {subset: "WL" * (n // 2) + "W" * (n % 2) for subset, n in README_COUNTS.items()}
    start = time.perf_counter()
    out = summary(spec, n_bootstrap=1000)
    assert time.perf_counter() - start < 1.0
    assert out["score"]["n"] == 2985 and len(out["sections"]) == 4


def test_score_summary_rejects_mismatched_or_nan_scores():
    rows, chosen, rejected = pairs({"alpacaeval-easy": "WL"})
    with pytest.raises(ValueError, match="one chosen and one rejected score per row"):
        score_summary(rows, chosen[:1], rejected, n_bootstrap=10, level=0.95, seed=0)
    with pytest.raises(DetoxError, match="NaN"):
        score_summary(rows, [float("nan"), 1.0], rejected, n_bootstrap=10, level=0.95, seed=0)


def good_line(subset: str = "alpacaeval-easy", i: int = 0) -> dict:
    return {"prompt": f"q{i}", "chosen": "good", "chosen_model": "a", "rejected": "bad", "rejected_model": "b",
            "subset": subset, "id": i}


@pytest.mark.parametrize(("bad_line", "where", "defect"), [
    ('{"prompt": "q", "rejected": "bad"', ":2: ", "not valid JSON"),  # a line that is not JSON: its line number
    (json.dumps({k: v for k, v in good_line().items() if k != "chosen"}), ": record 2: ", "missing key(s) 'chosen'"),
    (json.dumps({**good_line(), "rejected": "  "}), ": record 2: ", "'rejected' is empty"),
    (json.dumps({**good_line(), "subset": "anthropic_hhh"}), ": record 2: ", "unknown subset 'anthropic_hhh'"),
])
def test_malformed_line_names_file_and_record(tmp_path, bad_line, where, defect):
    path = tmp_path / "filtered.jsonl"
    path.write_text("\n".join([json.dumps(good_line()), bad_line, json.dumps(good_line(i=2))]) + "\n")
    with pytest.raises(DetoxError) as err:
        load_reward_bench(path)
    message = str(err.value)
    assert message.startswith(f"{path}{where}")
    assert defect in message
    assert "\n" not in message


def test_load_reads_good_lines_and_reports_a_missing_file(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(good_line()) + "\n\n" + json.dumps(good_line("hep-go", 1)) + "\n")
    assert [row["subset"] for row in load_reward_bench(path)] == ["alpacaeval-easy", "hep-go"]
    with pytest.raises(DetoxError, match="file not found"):
        load_reward_bench(tmp_path / "absent.jsonl")


def synthetic_rows() -> list[dict]:
    """10 rows each of two Chat, two Reasoning and one Safety subset, interleaved."""
    subsets = ["alpacaeval-easy", "math-prm", "mt-bench-med", "hep-go", "donotanswer"]
    return [good_line(subsets[i % 5], i) for i in range(50)]


def test_sample_pairs_caps_subsets_keeps_full_sections_whole_and_is_deterministic():
    rows = synthetic_rows()
    kept = sample_pairs(rows, ["Chat", "Reasoning"], per_subset=3, full_sections=["Reasoning"], seed=7)
    assert Counter(row["subset"] for row in kept) == {"alpacaeval-easy": 3, "mt-bench-med": 3, "math-prm": 10,
                                                       "hep-go": 10}
    ids = [row["id"] for row in kept]
    assert ids == sorted(ids)  # file order kept
    assert sample_pairs(rows, ["Chat", "Reasoning"], 3, ["Reasoning"], seed=7) == kept
    assert sample_pairs(rows, ["Chat", "Reasoning"], 3, ["Reasoning"], seed=8) != kept
    # A subset's sample does not depend on which other sections were asked for.
    chat_only = sample_pairs(rows, ["Chat"], 3, [], seed=7)
    assert chat_only == [row for row in kept if row["subset"] in SECTIONS["Chat"]]


def test_sample_pairs_without_filters_and_with_bad_arguments():
    rows = synthetic_rows()
    assert sample_pairs(rows, None, None, [], seed=0) == rows
    assert len(sample_pairs(rows, None, 2, ["Safety"], seed=0)) == 4 * 2 + 10
    with pytest.raises(DetoxError, match="unknown section"):
        sample_pairs(rows, ["Chat", "Prior Sets"], None, [], seed=0)
    with pytest.raises(DetoxError, match="per_subset must be at least 1"):
        sample_pairs(rows, None, 0, [], seed=0)


def test_real_filtered_split_loads_with_the_readme_counts(raw_dir):
    """The DVC-pulled file (`make setup`): a missing one fails the test (conftest.raw_dir), it never skips."""
    rows = load_reward_bench(raw_dir / "reward-bench" / "filtered.jsonl")
    assert len(rows) == 2985
    assert Counter(row["subset"] for row in rows) == README_COUNTS
    assert len(sample_pairs(rows, ["Chat", "Reasoning"], 20, ["Reasoning"], seed=0)) == 5 * 20 + 447 + 6 * 164
