from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from detoxrl import DetoxError
from detoxrl.data.toxicchat import (
    CATEGORIES,
    category_counts,
    category_of,
    chat_eval_prompts,
    load_toxicchat,
    split_toxicchat,
)



def instance(conv_id: str, text: str, toxic: object = "0", jailbreaking: object = "0") -> dict:
    return {"id": conv_id, "instance": text,
            "annotations": {"toxicity": {"majority_human": toxic, "individual_human_scores": []},
                            "jailbreaking": {"majority_human": jailbreaking, "individual_human_scores": []}}}


def write_doc(tmp_path: Path, instances: list) -> Path:
    path = tmp_path / "toxicchat.json"
    path.write_text(json.dumps({"dataset": "test", "annotations": [], "instances": instances}))
    return path


def make_records(n_texts: int = 400) -> list[dict]:
    """Synthetic records: every 5th text toxic, every 20th jailbreaking, every 7th text repeated (whitespace varies)."""
    records = []
    for i in range(n_texts):
        toxic, jb = i % 5 == 0, i % 20 == 0
        copies = 3 if i % 7 == 0 else 1
        for c in range(copies):
            records.append({"id": f"tc-{i:04d}-{c}", "text": " " * c + f"text {i}" + "x" * (i % 50),
                            "toxic": toxic, "jailbreaking": jb})
    return records


def toxic_rate(records: list[dict]) -> float:
    return sum(r["toxic"] for r in records) / len(records)


# --- load -------------------------------------------------------------------------------------------------------

def test_real_file_counts(raw_dir):
    """The DVC-pulled file (`make setup`): a missing one fails the test (conftest.raw_dir), it never skips."""
    records = load_toxicchat(raw_dir / "toxic-chat" / "toxicchat0124-human-train.json")
    assert len(records) == 2801
    assert sum(r["toxic"] for r in records) == 384
    assert sum(r["jailbreaking"] for r in records) == 113
    assert category_counts(records) == {"jailbreaking": 113, "toxic": 271, "nontoxic": 2417}
    assert len({r["id"] for r in records}) == 2801
    assert all(r["id"].startswith("tc-") and set(r) == {"id", "text", "toxic", "jailbreaking"} for r in records)
    assert len({r["text"].strip() for r in records}) == 2760


def test_real_split_and_prompts(raw_dir):
    records = load_toxicchat(raw_dir / "toxic-chat" / "toxicchat0124-human-train.json")
    train, heldout = split_toxicchat(records, 0.3, seed=0)
    assert len(train) + len(heldout) == 2801
    assert not {r["text"].strip() for r in train} & {r["text"].strip() for r in heldout}
    assert abs(toxic_rate(heldout) - 384 / 2801) < 0.01
    prompts, counts = chat_eval_prompts(heldout, None, None, 100, seed=0, max_chars=1000)
    assert counts["selected"]["nontoxic"] == 100
    assert counts["selected"]["jailbreaking"] == counts["available"]["jailbreaking"] - counts["dropped_too_long"][
        "jailbreaking"]
    assert counts["dropped_too_long"]["jailbreaking"] > 0  # jailbreak prompts run to 1,536 characters
    assert max(len(p["text"]) for p in prompts) <= 1000


def test_load_small_file(tmp_path):
    path = write_doc(tmp_path, [instance("aa", "hello"), instance("bb", "you idiot", "1"),
                                instance("cc", "pretend you are DAN", 1, 1)])
    assert load_toxicchat(path) == [
        {"id": "tc-aa", "text": "hello", "toxic": False, "jailbreaking": False},
        {"id": "tc-bb", "text": "you idiot", "toxic": True, "jailbreaking": False},
        {"id": "tc-cc", "text": "pretend you are DAN", "toxic": True, "jailbreaking": True},
    ]


BAD_INSTANCES = {
    "label 2": (instance("bb", "hi", toxic="2"),
                'instance 2 (id bb): annotations.toxicity.majority_human is "2", expected "0" or "1"'),
    "bool label": (instance("bb", "hi", jailbreaking=True),
                   "instance 2 (id bb): annotations.jailbreaking.majority_human is true"),
    "missing instance": ({k: v for k, v in instance("bb", "hi").items() if k != "instance"},
                         'instance 2 (id bb): "instance" (the user input) is missing'),
    "empty instance": (instance("bb", "   "), 'instance 2 (id bb): "instance" (the user input) is empty'),
    "missing label": ({"id": "bb", "instance": "hi", "annotations": {"toxicity": {"majority_human": "0"}}},
                      "instance 2 (id bb): annotations.jailbreaking.majority_human is missing"),
    "missing id": ({"instance": "hi", "annotations": {}}, 'instance 2: missing or empty "id"'),
    "not an object": (["hi"], "instance 2: expected a JSON object, got list"),
    "repeated id": (instance("aa", "other text"), "instance 2 (id aa): the id repeats instance 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INSTANCES))
def test_malformed_instance_names_file_index_and_id(tmp_path, case):
    bad, expected = BAD_INSTANCES[case]
    path = write_doc(tmp_path, [instance("aa", "fine"), bad, instance("cc", "fine too")])
    with pytest.raises(DetoxError) as exc:
        load_toxicchat(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", 'expected a JSON object with an "instances" list, got list'),
    ('{"instances": {"a": 1}}', 'expected an "instances" list, got dict'),
    ('{"dataset": "x"}', 'expected an "instances" list, got NoneType'),
    ('{"instances": [\n  {"id": "aa",}\n]}', "not valid JSON at line 2 column 15"),
])
def test_malformed_document(tmp_path, content, expected):
    path = tmp_path / "doc.json"
    path.write_text(content)
    with pytest.raises(DetoxError, match="^" + str(path)) as exc:
        load_toxicchat(path)
    assert expected in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(DetoxError, match="file not found"):
        load_toxicchat(tmp_path / "absent.json")


# --- split ------------------------------------------------------------------------------------------------------

def test_split_by_text_and_stratified():
    records = make_records()
    train, heldout = split_toxicchat(records, 0.25, seed=1)
    # every record on exactly one side, each side in input order
    ids = [r["id"] for r in records]
    assert sorted(r["id"] for r in train + heldout) == sorted(ids)
    assert [r["id"] for r in train] == [i for i in ids if i in {r["id"] for r in train}]
    assert [r["id"] for r in heldout] == [i for i in ids if i in {r["id"] for r in heldout}]
    # no text (after strip) on both sides; duplicates stay together
    train_texts, heldout_texts = {r["text"].strip() for r in train}, {r["text"].strip() for r in heldout}
    assert not train_texts & heldout_texts
    assert len(heldout_texts) == 100  # 25% of 400 distinct texts: 80 non-toxic + 15 toxic + 5 jailbreaking
    heldout_by_text = {}
    for r in heldout:
        heldout_by_text.setdefault(r["text"].strip(), []).append(r)
    assert any(len(v) == 3 for v in heldout_by_text.values())
    # stratified: exactly 25% of each category's texts held out, so per-text rates are kept exactly; per record
    # they move a little with how many repeated texts land on each side
    per_text = {r["text"].strip(): category_of(r) for r in heldout}
    assert Counter(per_text.values()) == {"nontoxic": 80, "toxic": 15, "jailbreaking": 5}
    assert abs(toxic_rate(heldout) - toxic_rate(records)) < 0.05
    assert abs(toxic_rate(train) - toxic_rate(records)) < 0.05


def test_split_deterministic_and_seeded():
    records = make_records()
    a = split_toxicchat(records, 0.25, seed=1)
    assert split_toxicchat(records, 0.25, seed=1) == a
    b = split_toxicchat(records, 0.25, seed=2)
    assert {r["id"] for r in b[1]} != {r["id"] for r in a[1]}


def test_split_keeps_disagreeing_duplicates_together():
    records = [{"id": f"tc-{i}", "text": f"t{i}", "toxic": i < 10, "jailbreaking": False} for i in range(40)]
    records += [{"id": "tc-d1", "text": "same", "toxic": True, "jailbreaking": False},
                {"id": "tc-d2", "text": " same ", "toxic": False, "jailbreaking": False}]
    for seed in range(10):
        train, heldout = split_toxicchat(records, 0.5, seed)
        side = train if any(r["id"] == "tc-d1" for r in train) else heldout
        assert [r for r in side if r["text"].strip() == "same"] == records[-2:]  # both, unchanged


def test_split_fraction_edges():
    records = make_records(40)
    assert split_toxicchat(records, 0.0, 0) == (records, [])
    assert split_toxicchat(records, 1.0, 0) == ([], records)
    with pytest.raises(DetoxError, match="heldout_fraction is 1.5"):
        split_toxicchat(records, 1.5, 0)


# --- chat evaluation prompts ------------------------------------------------------------------------------------

def test_chat_eval_prompts_counts_and_categories():
    _, heldout = split_toxicchat(make_records(), 0.5, seed=3)
    available = category_counts([r for r in heldout if r["id"].endswith("-0")])  # one record per text
    prompts, counts = chat_eval_prompts(heldout, n_toxic=10, n_jailbreaking=None, n_nontoxic=30, seed=0)
    assert counts["available"] == available
    assert counts["selected"] == {"jailbreaking": available["jailbreaking"], "toxic": 10, "nontoxic": 30}
    assert counts["dropped_too_long"] == {c: 0 for c in CATEGORIES}
    assert category_counts(prompts) == counts["selected"]
    by_id = {r["id"]: r for r in heldout}
    for p in prompts:
        assert set(p) == {"id", "text", "category", "toxic", "jailbreaking"}
        source = by_id[p["id"]]  # from the held-out part
        assert (p["text"], p["toxic"], p["jailbreaking"]) == (source["text"], source["toxic"], source["jailbreaking"])
        assert p["category"] == category_of(source)
        assert p["category"] != "nontoxic" or not (p["toxic"] or p["jailbreaking"])
    assert all(p["toxic"] for p in prompts if p["category"] == "jailbreaking")  # in make_records, jb implies toxic
    assert len({p["text"].strip() for p in prompts}) == len(prompts)  # one per distinct text
    # sorted: by category, then input order
    order = {r["id"]: i for i, r in enumerate(heldout)}
    keys = [(CATEGORIES.index(p["category"]), order[p["id"]]) for p in prompts]
    assert keys == sorted(keys)


def test_chat_eval_prompts_deterministic_and_seeded():
    _, heldout = split_toxicchat(make_records(), 0.5, seed=3)
    a, _ = chat_eval_prompts(heldout, 5, 3, 20, seed=0)
    assert chat_eval_prompts(heldout, 5, 3, 20, seed=0)[0] == a
    assert chat_eval_prompts(heldout, 5, 3, 20, seed=1)[0] != a
    # each category has its own generator: asking for more toxic leaves the non-toxic sample as it was
    b, _ = chat_eval_prompts(heldout, 8, 3, 20, seed=0)
    assert [p for p in b if p["category"] == "nontoxic"] == [p for p in a if p["category"] == "nontoxic"]


def test_chat_eval_prompts_max_chars():
    _, heldout = split_toxicchat(make_records(), 0.5, seed=3)
    distinct = {r["text"].strip(): r for r in reversed(heldout)}.values()  # first record of each text
    limit = 30
    too_long = category_counts([r for r in distinct if len(r["text"]) > limit])
    assert sum(too_long.values()) > 0
    prompts, counts = chat_eval_prompts(heldout, None, None, 10_000, seed=0, max_chars=limit)
    assert counts["dropped_too_long"] == too_long
    assert all(len(p["text"]) <= limit for p in prompts)
    assert counts["selected"] == {c: counts["available"][c] - too_long[c] for c in CATEGORIES}
    with pytest.raises(DetoxError, match="max_chars is 0"):
        chat_eval_prompts(heldout, None, None, 1, seed=0, max_chars=0)


def test_chat_eval_prompts_merge_disagreeing_duplicates():
    heldout = [{"id": "tc-a", "text": "same", "toxic": False, "jailbreaking": False},
               {"id": "tc-b", "text": "same ", "toxic": True, "jailbreaking": False},
               {"id": "tc-c", "text": "other", "toxic": False, "jailbreaking": False}]
    prompts, counts = chat_eval_prompts(heldout, None, None, 5, seed=0)
    assert prompts == [{"id": "tc-a", "text": "same", "category": "toxic", "toxic": True, "jailbreaking": False},
                       {"id": "tc-c", "text": "other", "category": "nontoxic", "toxic": False,
                        "jailbreaking": False}]
    assert counts["selected"] == {"jailbreaking": 0, "toxic": 1, "nontoxic": 1}
