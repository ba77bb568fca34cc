"""The two-way (seeds x prompts) bootstrap of the report's intervals, on hand-computed cases, and model cards."""

import json

import numpy as np
import pytest
from conftest import ROOT

from detoxrl import DetoxError
from detoxrl.cards import compose, make_card, read_card, write_card
from detoxrl.evaluation import metrics as M
from detoxrl.params import instances, seeded_name
from detoxrl.schema import load_params


def test_one_resample_averages_the_drawn_seeds_on_the_drawn_prompts():
    # 2 seeds x 2 prompts, one metric: seed 0 = [0.2, 0.4], seed 1 = [0.6, 1.0]
    runs = np.array([[[0.2], [0.4]], [[0.6], [1.0]]])
    pidx = np.array([[0, 0], [0, 1], [1, 1]])  # resample 0: prompt 0 twice; 1: both prompts; 2: prompt 1 twice
    sidx = np.array([[1, 1], [0, 1], [0, 0]])  # resample 0: seed 1 twice; 1: both seeds; 2: seed 0 twice
    got = M._seed_replicates(runs, pidx, sidx, M.mean_over_prompts)[:, 0]
    # 0: seed 1 at prompt 0 = 0.6; 1: mean(mean(0.2, 0.4), mean(0.6, 1.0)) = mean(0.3, 0.8) = 0.55; 2: 0.4
    assert got == pytest.approx([0.6, 0.55, 0.4])


def test_the_interval_covers_the_spread_over_seeds_that_a_prompt_interval_misses():
    # every prompt alike within a seed: the prompt bootstrap alone sees no uncertainty at all; two seeds at 0 and 1
    # give resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]
    runs = np.stack([np.zeros((10, 1)), np.ones((10, 1))])
    b = M.seeds_bootstrap(runs, 4000, 0.95, 0)
    assert b["stats"] == [{"value": 0.5, "ci_low": 0.0, "ci_high": 1.0}]
    assert b["per_seed"] == [[0.0], [1.0]]
    for one in runs:  # each seed alone: a prompt-only interval of zero width
        assert M.seeds_bootstrap(one[None], 4000, 0.95, 0)["stats"] == [{"value": one[0, 0], "ci_low": one[0, 0],
                                                                           "ci_high": one[0, 0]}]


def test_one_seed_is_the_prompt_bootstrap_resample_for_resample():
    x = np.random.default_rng(3).random((150, 3))
    assert M.seeds_bootstrap(x[None], 1000, 0.95, 7)["stats"] == M.bootstrap_means(x, 1000, 0.95, 7)


def test_a_difference_draws_the_reference_seeds_apart_and_the_prompts_alike():
    # the reference is the method shifted by exactly 0.1 on every prompt and seed: every resample draws the same
    # prompts for both, but seeds independently, so the difference is 0.1 only where the seed draws agree
    rng = np.random.default_rng(0)
    runs = rng.random((3, 40, 1))
    same = M.seeds_bootstrap(runs[:1], 1000, 0.95, 0, ref=runs[:1] - 0.1)["stats"][0]
    assert same == pytest.approx({"value": 0.1, "ci_low": 0.1, "ci_high": 0.1})  # one seed each: paired exactly
    apart = M.seeds_bootstrap(runs, 1000, 0.95, 0, ref=runs - 0.1)["stats"][0]
    assert apart["value"] == pytest.approx(0.1) and apart["ci_low"] < 0.1 < apart["ci_high"]


def test_one_run_interval_is_wider_than_the_mean_over_seeds():
    rng = np.random.default_rng(1)
    runs = rng.random((3, 60, 1)) + np.array([0.0, 0.3, 0.6])[:, None, None]  # seeds far apart
    mean = M.seeds_bootstrap(runs, 2000, 0.95, 0)["stats"][0]
    one = M.seeds_bootstrap(runs, 2000, 0.95, 0, one_run=True)["stats"][0]
    assert one["ci_high"] - one["ci_low"] > mean["ci_high"] - mean["ci_low"]
    assert one["ci_low"] < runs[0].mean() and one["ci_high"] > runs[2].mean()  # it spans the seeds themselves


def test_tail_statistic_is_each_seeds_own_worst_prompts_averaged():
    runs = np.array([[[0.9], [0.1], [0.2]], [[0.1], [0.8], [0.3]]])  # worst prompt: p0 for seed 0, p1 for seed 1
    b = M.seeds_bootstrap(runs, 200, 0.95, 0, stat=M.tail_stat(1))
    assert b["per_seed"] == [[0.9], [0.8]] and b["stats"][0]["value"] == pytest.approx(0.85)


def test_seeded_methods_are_named_and_placed_per_seed():
    p = load_params(ROOT / "params.yaml")
    assert seeded_name("ppo", 2) == "ppo/s2"
    runs = instances(p)
    for m in p.seeded:
        for s in p.seeds:
            assert runs[f"{m}/s{s}"] == f"models/{m}/s{s}"
    assert set(p.models) <= set(runs)


def test_dvc_plots_overlay_every_seed_of_ppo():
    """The top-level seed-overlay plots of dvc.yaml name exactly the files of params.yaml's `seeds`."""
    import yaml

    p = load_params(ROOT / "params.yaml")
    plots = {next(iter(d)): d[next(iter(d))] for d in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
             if isinstance(d, dict) and next(iter(d)).endswith("_by_seed")}
    assert plots
    for name, spec in plots.items():
        seeds = sorted(int(path.split("/")[2][1:]) for path in spec["y"])
        assert seeds == sorted(p.seeds), name


def test_cards_compose_the_labels_signal_and_budget_and_reject_bad_ones(tmp_path):
    labels = make_card("data/ai_labels", "label_ai", seed=0, init="models/sft", data=["pool"], signal="AI labels",
                       judges=["perspective_distilled"], training_samples=90, sample_unit="pairs",
                       scored_responses=256, seconds=40.0)
    init = make_card("sft", "sft", seed=42, init="base", data=[], signal="supervised", seconds=100.0)
    own = make_card("dpo_rlaif/s0", "dpo", seed=0, init="models/sft", data=["x"], signal="DPO", training_samples=96,
                    sample_unit="pairs", seconds=39.5)
    card = compose(own, labels, init)
    assert card["judges"] == ["perspective_distilled"]
    assert card["budget"]["scored_responses"] == 256 and card["budget"]["seconds"] == 79.5  # not the init's 100 s
    write_card(card, tmp_path)
    assert read_card("dpo_rlaif/s0", tmp_path) == card
    (tmp_path / "bad.json").write_text(json.dumps({**card, "budget": {**card["budget"], "seconds": "soon"}}))
    with pytest.raises(DetoxError, match=r"bad\.json: budget\.seconds must be"):
        read_card("bad", tmp_path)
    with pytest.raises(DetoxError, match=r"no model card for 'nope'"):
        read_card("nope", tmp_path)


def test_check_repro_holds_a_seed_rerun_on_another_kind_to_the_spread_over_seeds():
    from detoxrl_tools.repro_check import SEED_RUN, Comparison, compare_with_seed_spread

    assert SEED_RUN.match("metrics/eval/ppo/s2.json")["method"] == "ppo"
    assert SEED_RUN.match("experiments/results/ppo_cvar/s0.json")["seed"] == "0"
    assert SEED_RUN.match("metrics/eval/sft.json") is None
    spread = {k: {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5}
              for k in ("expected_max_toxicity", "toxicity_probability", "mean_toxicity")}

    def rerun(emt):
        return {"toxicity": {"overall": {"expected_max_toxicity": {"value": emt},
                                         "toxicity_probability": {"value": 0.4}, "mean_toxicity": {"value": 0.31}}}}

    inside = compare_with_seed_spread(spread, rerun(0.49), "m", Comparison(mode="ci"))
    assert inside.ok and inside.mode == "seeds" and inside.ci_checked == 3
    outside = compare_with_seed_spread(spread, rerun(0.55), "m", Comparison(mode="ci"))
    assert outside.different == ["m:expected_max_toxicity: 0.55 outside the committed spread of one run 0.4 [0.3, 0.5]"]
