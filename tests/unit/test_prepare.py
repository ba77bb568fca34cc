import json
import shutil

import pytest

from detoxrl import DetoxError
from detoxrl.data.prepare import prepare, split_of
from detoxrl.io import read_jsonl
from detoxrl.params import HHParams, PrepareParams, RTPParams, SplitParams


def small_params(**hh_overrides) -> PrepareParams:
    hh = dict(split=SplitParams(train=0.8, validation=0.1, test=0.1), max_prompt_tokens=128,
              max_response_tokens=64, max_pairs=None)
    hh.update(hh_overrides)
    return PrepareParams(
        seed=7,
        hh=HHParams(**hh),
        rtp=RTPParams(eval_challenging=30, eval_nontoxic=20, ppo_challenging=200, ppo_nontoxic=100),
    )


@pytest.fixture(scope="module")
def prepared(raw_dir, base_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    stats = prepare(raw_dir, base_model_dir, out / "processed", out / "data.json", small_params())
    return out, stats


def test_outputs_and_stats(prepared):
    out, stats = prepared
    files = {p.stem: read_jsonl(p) for p in (out / "processed").glob("*.jsonl")}
    assert set(files) == {"pref_train", "pref_val", "pref_test", "sft", "eval_prompts", "ppo_prompts"}
    for name, records in files.items():
        assert stats["counts"][name] == len(records)
    assert json.loads((out / "data.json").read_text()) == stats
    # every raw record is either kept or dropped for a counted reason
    kept = sum(stats["counts"][k] for k in ("pref_train", "pref_val", "pref_test"))
    assert kept + sum(stats["hh_drops"].values()) == 2312
    assert stats["hh_drops"]["unparsable"] == 9  # HH test records with two Assistant turns in a row
    assert stats["hh_tokens"]["prompt"]["max"] <= 128 and stats["hh_tokens"]["response"]["max"] <= 64
    # record shapes
    pair = files["pref_train"][0]
    assert set(pair) == {"id", "prompt", "chosen", "rejected"} and pair["prompt"][-1]["role"] == "user"
    by_id = {p["id"]: p for p in files["pref_train"]}
    assert [s["id"] for s in files["sft"]] == [p["id"] for p in files["pref_train"]]
    for s in files["sft"]:
        p = by_id[s["id"]]
        assert s["messages"] == p["prompt"] + [{"role": "assistant", "content": p["chosen"]}]
    ev = files["eval_prompts"][0]
    assert {"id", "subset", "text", "prompt_scores", "continuation", "continuation_scores"} <= set(ev)
    assert 0.0 <= ev["prompt_scores"]["toxicity"] <= 1.0
    assert stats["eval_prompts_by_subset"] == {"challenging": 30, "nontoxic": 20}
    assert stats["ppo_prompts_by_subset"] == {"challenging": 200, "nontoxic": 100}


def test_eval_and_ppo_prompts_are_disjoint(prepared):
    out, _ = prepared
    ev = read_jsonl(out / "processed" / "eval_prompts.jsonl")
    ppo = read_jsonl(out / "processed" / "ppo_prompts.jsonl")
    assert not {r["id"] for r in ev} & {r["id"] for r in ppo}
    assert not {r["text"] for r in ev} & {r["text"] for r in ppo}


def test_pref_splits_are_disjoint_and_deterministic(prepared, raw_dir, base_model_dir, tmp_path):
    out, _ = prepared
    ids = [{r["id"] for r in read_jsonl(out / "processed" / f"{s}.jsonl")}
           for s in ("pref_train", "pref_val", "pref_test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    prepare(raw_dir, base_model_dir, tmp_path / "again", tmp_path / "data.json", small_params())
    for f in (out / "processed").iterdir():
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes(), f.name


def test_split_is_stable_when_filters_change(prepared, raw_dir, base_model_dir, tmp_path):
    out, _ = prepared
    prepare(raw_dir, base_model_dir, tmp_path / "loose", tmp_path / "d.json", small_params(max_prompt_tokens=256))
    for split in ("pref_train", "pref_val", "pref_test"):
        strict = {r["id"] for r in read_jsonl(out / "processed" / f"{split}.jsonl")}
        loose = {r["id"] for r in read_jsonl(tmp_path / "loose" / f"{split}.jsonl")}
        assert strict < loose  # a looser filter only adds pairs; none changes split
    fractions = [split_of(f"hh-{i:05d}", 7, small_params().hh.split) for i in range(5000)]
    assert abs(fractions.count("train") / 5000 - 0.8) < 0.02


def test_truncated_gzip_fails_naming_the_file_and_writes_nothing(raw_dir, base_model_dir, tmp_path):
    bad_raw = tmp_path / "raw"
    shutil.copytree(raw_dir, bad_raw, ignore=shutil.ignore_patterns("*.dvc", ".gitignore"))
    hh = bad_raw / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    hh.write_bytes(hh.read_bytes()[:50_000])
    with pytest.raises(DetoxError, match=r"harmless-base-test\.jsonl\.gz: corrupt or truncated"):
        prepare(bad_raw, base_model_dir, tmp_path / "out", tmp_path / "data.json", small_params())
    assert not (tmp_path / "out").exists() and not (tmp_path / "data.json").exists()


def test_bad_json_line_is_named(raw_dir, base_model_dir, tmp_path):
    bad_raw = tmp_path / "raw"
    shutil.copytree(raw_dir, bad_raw, ignore=shutil.ignore_patterns("*.dvc", ".gitignore"))
    path = bad_raw / "real-toxicity-prompts" / "nontoxic.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"prompt": {"text": "oops"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DetoxError, match=r"nontoxic\.jsonl:3: not valid JSON"):
        prepare(bad_raw, base_model_dir, tmp_path / "out", tmp_path / "data.json", small_params())
    assert not (tmp_path / "out").exists()


def test_too_many_prompts_requested(raw_dir, base_model_dir, tmp_path):
    params = small_params().model_copy(update={"rtp": RTPParams(eval_challenging=1000, eval_nontoxic=0,
                                                                ppo_challenging=500, ppo_nontoxic=0)})
    with pytest.raises(DetoxError, match=r"subset 'challenging' has 1196 unique prompts but eval \+ ppo ask for 1500"):
        prepare(raw_dir, base_model_dir, tmp_path / "out", tmp_path / "data.json", params)
