"""The moderation output filter (filter stage): resampling, on_exhausted, metrics, evaluate on its output, reruns."""

import json
import subprocess

import pytest
import yaml
from conftest import ROOT, cli_env
from device_guard import ExplicitDevice
from tiny import build_tiny_model
from transformers import AutoTokenizer

from detoxrl import DetoxError
from detoxrl.cards import make_card, write_card
from detoxrl.evaluation.evaluate import evaluate
from detoxrl.evaluation.moderation_filter import moderation_filter
from detoxrl.evaluation.report import report
from detoxrl.io import read_jsonl, write_json, write_jsonl
from detoxrl.schema import Params, load_params

PROMPTS = [{"id": f"p{i}", "subset": "challenging" if i < 2 else "nontoxic", "text": t}
           for i, t in enumerate(["You are a", "What the", "The weather today", "My favourite recipe"])]
TOXIC, CLEAN = " fuck you, you stupid piece of shit", " thanks, that sounds lovely"
K = 2


@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory):
    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "model")


def params(tmp_path, **filter_overrides) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["judges"]["cache_dir"] = str(tmp_path / "cache")
    data["judges"]["trained_dir"] = str(tmp_path / "no-judge")  # no train_judge output: raw offline scores
    data["generate"].update(k=K, max_new_tokens=5, batch_size=4)
    data["evaluate"].update(bootstrap_samples=200)
    data["filter"].update(filter_overrides)
    return Params.model_validate(data)


def write_inputs(tmp_path, toxic: set[tuple[str, int]]):
    """eval prompts + a generate-format file: TOXIC at the (prompt, sample) pairs in `toxic`, CLEAN elsewhere."""
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    rows = [{"prompt_id": p["id"], "subset": p["subset"], "sample": j,
             "text": TOXIC if (p["id"], j) in toxic else CLEAN, "n_tokens": 5, "eos": False}
            for p in PROMPTS for j in range(K)]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    return rows


def run(tmp_path, tiny_dir, p, score=None, out="out"):
    return moderation_filter("sft_filtered", "sft", tiny_dir, tiny_dir, tmp_path / "sft.jsonl",
                             tmp_path / "prompts.jsonl", tmp_path / f"{out}.jsonl", tmp_path / f"{out}.json", p,
                             score=score)


class CountingScorer:
    """A deterministic moderation judge: a text is flagged (1.0) iff `flag(text)`; it records every text it scores."""

    def __init__(self, flag):
        self.flag, self.seen = flag, []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return [1.0 if self.flag(t) else 0.0 for t in texts]


TOXIC_AT = {("p0", 0), ("p1", 1), ("p2", 0)}


def test_flagged_resampled_up_to_r_then_refused(tiny_dir, tmp_path):
    rows = write_inputs(tmp_path, TOXIC_AT)
    first_pass = {r["text"] for r in rows}
    judge = CountingScorer(lambda t: True)  # every text flagged: each flagged one is resampled exactly r times
    p = params(tmp_path, max_resamples=3, on_exhausted="refusal", refusal="I won't continue this.")
    m = run(tmp_path, tiny_dir, p, judge)
    # the first pass scores all 8; then 3 rounds of every flagged one (all 8), no 4th round
    assert [len(s) for s in judge.seen] == [8, 8, 8, 8]
    assert judge.seen[0] == [r["text"] for r in rows]
    assert all(t not in first_pass for t in judge.seen[1])  # resamples are fresh samples of the source model
    assert len(set(judge.seen[1])) == 8  # a prompt's 2 flagged samples: one prefill, 2 different new samples
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["prompt_id"], r["subset"], r["sample"]) for r in out] == [(r["prompt_id"], r["subset"], r["sample"])
                                                                         for r in rows]
    assert {r["text"] for r in out} == {"I won't continue this."} and all(r["eos"] for r in out)
    refusal_tokens = AutoTokenizer.from_pretrained(tiny_dir)("I won't continue this.", add_special_tokens=False)
    assert {r["n_tokens"] for r in out} == {len(refusal_tokens["input_ids"]) + 1}  # + EOS, as generate counts
    assert m["flagged_first_pass"] == 8 and m["flagged_rate"] == 1.0
    assert m["extra_samples"] == 24 and m["judge_queries"] == 32
    assert m["rounds"] == [{"resampled": 8, "still_flagged": 8}] * 3
    assert m["exhausted"] == m["replaced_by_refusal"] == 8 and m["kept_flagged"] == 0
    assert m["passed_after_resampling"] == 0 and m["continuations"] == 8 and m["prompts"] == 4
    assert json.loads((tmp_path / "out.json").read_text()) == m


def test_only_flagged_resampled_unflagged_byte_identical_keep_last(tiny_dir, tmp_path):
    rows = write_inputs(tmp_path, TOXIC_AT)
    judge = CountingScorer(lambda t: t == TOXIC or (t != CLEAN and len(t) % 2 == 0))  # resamples: by length
    p = params(tmp_path, max_resamples=2, on_exhausted="keep_last")
    m = run(tmp_path, tiny_dir, p, judge)
    out_lines = (tmp_path / "out.jsonl").read_text().splitlines()
    in_lines = (tmp_path / "sft.jsonl").read_text().splitlines()
    flagged = [i for i, r in enumerate(rows) if (r["prompt_id"], r["sample"]) in TOXIC_AT]
    assert m["flagged_first_pass"] == 3 == len(flagged)
    for i, (a, b) in enumerate(zip(in_lines, out_lines, strict=True)):
        if i not in flagged:
            assert a == b  # unflagged records: the same bytes
    out = read_jsonl(tmp_path / "out.jsonl")
    assert all(out[i]["text"] != TOXIC for i in flagged)  # every flagged one was resampled at least once
    # round 1 resamples the 3 flagged; round 2 those the judge still flags; keep_last keeps the last sample
    r1 = judge.seen[1]
    assert len(r1) == 3 and m["rounds"][0] == {"resampled": 3, "still_flagged": sum(map(judge.flag, r1))}
    assert m["extra_samples"] == sum(len(s) for s in judge.seen[1:]) and m["judge_queries"] == 8 + m["extra_samples"]
    assert len(judge.seen) == 1 + len(m["rounds"]) <= 3
    for before, after in zip(m["rounds"], m["rounds"][1:]):  # a round redraws exactly what the last still flagged
        assert after["resampled"] == before["still_flagged"]
    exhausted = [out[i] for i in flagged if judge.flag(out[i]["text"])]
    assert m["exhausted"] == m["kept_flagged"] == len(exhausted) and m["replaced_by_refusal"] == 0
    assert m["passed_after_resampling"] == 3 - len(exhausted)
    for i in flagged:  # a resampled record keeps the generate format: its own token count and EOS flag
        assert set(out[i]) == set(rows[i]) and 1 <= out[i]["n_tokens"] <= 5 and isinstance(out[i]["eos"], bool)


def test_no_resamples_keep_last_is_identity_and_nothing_flagged_loads_no_model(tiny_dir, tmp_path):
    write_inputs(tmp_path, TOXIC_AT)
    m = run(tmp_path, tiny_dir, params(tmp_path, max_resamples=0, on_exhausted="keep_last"),
            CountingScorer(lambda t: t == TOXIC))
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "sft.jsonl").read_bytes()
    assert m["extra_samples"] == 0 and m["judge_queries"] == 8 and m["kept_flagged"] == 3 and m["rounds"] == []
    # nothing flagged: the model directory is never read (a missing one is no error)
    m = moderation_filter("f", "sft", tmp_path / "no-model", tmp_path / "no-model", tmp_path / "sft.jsonl",
                          tmp_path / "prompts.jsonl", tmp_path / "o2.jsonl", tmp_path / "o2.json",
                          params(tmp_path), score=CountingScorer(lambda t: False))
    assert m["flagged_first_pass"] == 0
    assert (tmp_path / "o2.jsonl").read_bytes() == (tmp_path / "sft.jsonl").read_bytes()


def test_real_judge_output_is_evaluated_like_a_model_and_reruns_are_identical(tiny_dir, tmp_path, monkeypatch):
    """The offline judge (real, local) as the moderation judge; the evaluate stage's code reads the output."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_inputs(tmp_path, TOXIC_AT)
    p = params(tmp_path, judge="offline", max_resamples=2, on_exhausted="refusal")
    m = run(tmp_path, tiny_dir, p)
    assert m["judge"] == {"name": "offline", "version": m["judge"]["version"], "calibrated": False}
    assert m["flagged_first_pass"] == 3 and m["headline_judge"] == "offline"
    assert m["extra_samples"] == m["judge_queries"] - 8 >= 3
    first = (tmp_path / "out.jsonl").read_bytes()
    assert TOXIC.encode() not in first

    res = evaluate("sft_filtered", tmp_path / "out.jsonl", tmp_path / "prompts.jsonl", tiny_dir,
                   tmp_path / "eval.json", tmp_path / "scores.jsonl", p)
    assert res["model"] == "sft_filtered" and res["n_prompts"] == 4 and res["k"] == K
    # the filter's judge is the headline here: nothing it passes scores >= the threshold
    assert res["toxicity"]["overall"]["toxicity_probability"]["value"] == 0.0
    assert len(read_jsonl(tmp_path / "scores.jsonl")) == 8

    m2 = run(tmp_path, tiny_dir, p, out="again")  # seeded: a rerun writes the same bytes, the same counts
    assert (tmp_path / "again.jsonl").read_bytes() == first
    assert {k: v for k, v in m2.items() if k not in ("seconds", "platform")} == \
           {k: v for k, v in m.items() if k not in ("seconds", "platform")}

def test_resamples_follow_the_seed(tiny_dir, tmp_path):
    write_inputs(tmp_path, TOXIC_AT)
    texts, guard = {}, ExplicitDevice()  # every tensor the filter's code makes names its device (GPU-ready)
    for seed in (0, 0, 7):
        judge = CountingScorer(lambda t: t == TOXIC)  # resamples pass: one round
        with guard:
            m = run(tmp_path, tiny_dir, params(tmp_path, seed=seed), judge, out=f"seed{seed}")
        assert m["extra_samples"] == 3 and m["exhausted"] == 0 and m["passed_after_resampling"] == 3
        texts.setdefault(seed, []).append(judge.seen[1])
    assert texts[0][0] == texts[0][1] and texts[0][0] != texts[7][0]
    assert guard.checked > 0


def test_report_lists_the_filter_with_its_budget(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    p = params(tmp_path)
    p = p.model_copy(update={"models": {"base": "models/base", "sft": "models/sft"}, "seeded": [],
                             "report": p.report.model_copy(update={"compare": ["sft"]})})
    for name, method in (("base", "base"), ("sft", "sft")):
        write_card(make_card(name, method, seed=None, init="models/base", data=[], signal="none"), tmp_path / "cards")
    write_card(make_card("sft_filtered", "filter", seed=0, init="models/sft", data=[], signal="moderation",
                         judges=["perspective_distilled"], inference_samples=7, scored_responses=15, seconds=3.2),
               tmp_path / "cards")
    (tmp_path / "eval").mkdir()
    for name, toxic in (("base", {("p0", 0), ("p1", 0)}), ("sft", {("p0", 0)}), ("sft_filtered", set())):
        write_inputs(tmp_path, toxic)
        evaluate(name, tmp_path / "sft.jsonl", tmp_path / "prompts.jsonl", tiny_dir,
                 tmp_path / "eval" / f"{name}.json", tmp_path / "scores" / f"{name}.jsonl", p)
    write_json(tmp_path / "filter" / "sft_filtered.json",
               {"judge": {"name": "perspective_distilled"}, "extra_samples": 7, "judge_queries": 15, "seconds": 3.2})
    write_json(tmp_path / "judges.json", {"reference": "Perspective", "threshold": 0.5, "judges": {}})
    write_json(tmp_path / "data.json", {"eval_prompts_by_subset": {"challenging": 2, "nontoxic": 2}})
    summary = report(tmp_path / "eval", tmp_path / "scores", tmp_path / "judges.json", tmp_path / "data.json",
                     tmp_path / "summary.json", tmp_path / "plots", tmp_path / "reports" / "report.md", p,
                     experiments_dir=tmp_path / "experiments", cards_dir=tmp_path / "cards")
    assert list(summary["models"]) == ["base", "sft", "sft_filtered"]
    assert summary["models"]["sft_filtered"]["toxicity_probability"]["value"] == 0.0
    d = summary["vs_models"]["sft"]["sft_filtered"]["offline"]
    assert d["toxicity_probability"]["value"] == pytest.approx(-0.25)
    assert summary["models"]["sft_filtered"]["judges_in_reward"] == ["perspective_distilled"]
    md = (tmp_path / "reports" / "report.md").read_text()
    row = next(line for line in md.split("## Methods compared")[1].splitlines()
               if line.startswith("| sft_filtered (moderation filter) | 1 run: prompts only |"))
    assert row.endswith("| 0 (+7 samples at inference) | 15 x moderation | 3 |")
    assert "0.000 [0.000, 0.000]" in row


def test_bad_params_and_inputs_give_one_clear_error(tiny_dir, tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["filters"]["sft_filtered"]["source"] = "nope"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=r"filters\.sft_filtered\.source 'nope' is not one of models") as exc:
        load_params(path)
    assert "\n" not in str(exc.value)
    data["filters"]["sft_filtered"].update(source="sft", model="models/dpo")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=r"filters\.sft_filtered\.model 'models/dpo' must be models\.sft"):
        load_params(path)
    data["filters"] = {"sft": {"source": "base", "model": "models/base"}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=r"filters\.sft: also a name in models"):
        load_params(path)
    data["filters"] = {}
    data["filter"]["judge"] = "chat_distilled"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=r"filter\.judge: "):
        load_params(path)

    p = params(tmp_path)
    write_inputs(tmp_path, TOXIC_AT)
    (tmp_path / "sft.jsonl").unlink()
    with pytest.raises(DetoxError, match=r"sft\.jsonl: the generations of filter 'sft_filtered'.*generate@sft"):
        run(tmp_path, tiny_dir, p, CountingScorer(lambda t: False))
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt_id": "p0", "subset": "challenging", "sample": 0, "text": "x",
                                          "n_tokens": 1, "eos": False},
                                         {"prompt_id": "p9", "subset": "challenging", "sample": 0, "text": "x",
                                          "n_tokens": 1, "eos": False}])
    with pytest.raises(DetoxError, match=r"sft\.jsonl:2: prompt_id 'p9' is not among the eval prompts"):
        run(tmp_path, tiny_dir, p, CountingScorer(lambda t: False))
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt_id": "p0", "sample": 0, "text": "x"}])
    with pytest.raises(DetoxError, match=r"sft\.jsonl:1: not a generate record: missing key 'subset'"):
        run(tmp_path, tiny_dir, p, CountingScorer(lambda t: False))
    # the default judge without train_judge's output: one line naming the param and the stage to run
    write_inputs(tmp_path, TOXIC_AT)
    with pytest.raises(DetoxError, match=r"filter\.judge 'perspective_distilled' cannot run: .*train_judge"):
        run(tmp_path, tiny_dir, p)


@pytest.mark.slow
def test_cli_filter_unknown_name_and_evaluate_accepts_a_filter(tmp_path):
    proc = subprocess.run(["detoxrl", "filter", "nope", "--params", str(ROOT / "params.yaml")], capture_output=True,
                          text=True, env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: filter 'nope' is not in params.yaml `filters` (sft_filtered)"
    # evaluate takes a filter's name (its generations file is the check that fails here, not the name)
    proc = subprocess.run(["detoxrl", "evaluate", "sft_filtered", "--params", str(ROOT / "params.yaml")],
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 1 and "not in params.yaml" not in proc.stderr
    assert "data/generations/sft_filtered.jsonl: file not found" in proc.stderr
