"""Human labels: the labels file, the labelling page in headless Chromium, Label Studio's formats, the stages.

The page tests run the real `detoxrl label-human` server process and drive Debian's Chromium with Playwright:
keys and clicks must write the label of the text that was on that side, a reload or a killed server must resume
at the first unlabelled pair, and the evaluation mode must not show which model wrote what.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import browser, label_server, wait_progress
from conftest import ROOT, cli_env, run

from detoxrl import DetoxError
from detoxrl.data.labels import LabelStore, import_label_studio, pool_tasks, read_labels
from detoxrl.io import read_jsonl, write_jsonl
from detoxrl.schema import load_params

POOL = [{"id": f"rtp-nontoxic-{i:04d}", "pool": "human", "subset": "nontoxic", "prompt": f"Prompt number {i} says",
         "responses": [f" first answer {i}", f" second answer {i}"]} for i in range(4)]


def _post(url: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/label", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _chosen_text(label: dict, pool: list[dict]) -> str | None:
    task = next(t for t in pool_tasks(pool) if t["pair_id"] == label["pair_id"])
    return task[label["choice"]] if label["choice"] in ("a", "b") else None


@pytest.fixture()
def pool_file(tmp_path) -> Path:
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    return tmp_path / "pool.jsonl"


@pytest.mark.slow
def test_page_keys_and_clicks_write_the_shown_text_and_reload_resumes(tmp_path, pool_file):
    labels = tmp_path / "labels" / "human.jsonl"
    with label_server(["--pool", str(pool_file), "--labels", str(labels)], ROOT, cli_env()) as (_, url), \
            browser() as b:
        page = b.new_page()
        page.goto(url)
        # The content warning comes first; no text is on the page before it is acknowledged.
        assert page.is_visible("#warning") and not page.is_visible("#work")
        assert "first answer 0" not in page.content()
        page.fill("#annotator", "alice")
        page.click("#start")
        wait_progress(page, 0, 4)
        shown = []
        for action in ("ArrowLeft", "#btn-right", "t"):
            left, right = page.inner_text("#left"), page.inner_text("#right")
            shown.append((left, right))
            page.click(action) if action.startswith("#") else page.keyboard.press(action)
            wait_progress(page, len(shown), 4)
        written = read_labels(labels)
        assert [x["annotator"] for x in written] == ["alice"] * 3 and [x["source"] for x in written] == ["page"] * 3
        assert _chosen_text(written[0], POOL).strip() == shown[0][0].strip()
        assert _chosen_text(written[1], POOL).strip() == shown[1][1].strip()
        assert written[2]["choice"] == "tie"
        assert [x["pair_id"] for x in written] == [r["id"] for r in POOL[:3]]  # in pool order
        # `left` records which text was on the left: it matches what the browser showed.
        for x, (left, _) in zip(written, shown):
            assert pool_tasks(POOL)[[r["id"] for r in POOL].index(x["pair_id"])][x["left"]].strip() == left.strip()

        # Reload: the warning again, the annotator id remembered, and the first unlabelled pair (the 4th).
        page.reload()
        assert page.is_visible("#warning") and page.input_value("#annotator") == "alice"
        page.keyboard.press("Enter")
        wait_progress(page, 3, 4)
        assert page.inner_text("#prompt") == POOL[3]["prompt"]
        page.keyboard.press("s")
        page.wait_for_selector("#done", state="visible")
        assert read_labels(labels)[-1]["choice"] == "skip"
        # Another annotator starts from the beginning; the labels are per annotator.
        other = b.new_page()
        other.goto(url)
        other.fill("#annotator", "bob")
        other.keyboard.press("Enter")
        wait_progress(other, 0, 4)
        assert other.inner_text("#prompt") == POOL[0]["prompt"]


@pytest.mark.slow
def test_killed_server_loses_nothing_and_duplicates_and_bad_submissions_get_clear_errors(tmp_path, pool_file):
    labels = tmp_path / "human.jsonl"
    args = ["--pool", str(pool_file), "--labels", str(labels)]
    with browser() as b:
        with label_server(args, ROOT, cli_env()) as (proc, url):
            one, two = b.new_page(), b.new_page()
            for page in (one, two):
                page.goto(url)
                page.keyboard.press("Enter")  # anonymous
                wait_progress(page, 0, 4)
            one.keyboard.press("ArrowRight")
            wait_progress(one, 1, 4)
            # The second tab still shows pair 0: its answer is refused with a clear error, and it moves on.
            two.keyboard.press("ArrowLeft")
            two.wait_for_function("document.getElementById('error').textContent.includes('already labelled')")
            assert "anonymous" in two.inner_text("#error") and POOL[0]["id"] in two.inner_text("#error")
            wait_progress(two, 1, 4)
            before = labels.read_bytes()
            status, body = _post(url, {"pair_id": POOL[1]["id"], "choice": "left"})
            assert status == 400 and "expected exactly pair_id, sha, choice, left_is, annotator" in body["error"]
            status, body = _post(url, {"pair_id": POOL[1]["id"], "sha": "0" * 16, "choice": "left", "left_is": "a",
                                       "annotator": "anonymous"})
            assert status == 400 and "other texts now" in body["error"]
            status, body = _post(url, {"pair_id": "nope", "sha": "0", "choice": "up", "left_is": "a",
                                       "annotator": "anonymous"})
            assert status == 400 and "choice must be left, right, tie or skip" in body["error"]
            assert labels.read_bytes() == before  # nothing written by refused submissions
            proc.send_signal(signal.SIGKILL)  # a crash
            proc.wait()
        assert len(read_labels(labels)) == 1
        with label_server(args, ROOT, cli_env()) as (_, url):
            page = b.new_page()
            page.goto(url)
            page.keyboard.press("Enter")
            wait_progress(page, 1, 4)  # resumes at the first unlabelled pair
            assert page.inner_text("#prompt") == POOL[1]["prompt"]


@pytest.mark.slow
def test_eval_mode_is_blind_and_its_labels_give_win_rate_and_judge_agreement(tmp_path):
    from detoxrl.evaluation.human_eval import eval_tasks, human_eval

    params = load_params(ROOT / "params.yaml")
    a, b = params.human_eval.model_a, params.human_eval.model_b
    prompts = [{"id": f"rtp-challenging-{i:04d}", "subset": "challenging", "text": f"Sensitive prompt {i}"}
               for i in range(3)] + [{"id": "rtp-nontoxic-0000", "subset": "nontoxic", "text": "A calm prompt"}]
    write_jsonl(tmp_path / "eval_prompts.jsonl", prompts)
    gens, scores = tmp_path / "generations", tmp_path / "scores"
    # model_b's continuation is the calm one; the judge `j1` agrees with that, `j2` says the opposite.
    for name, word in ((a, "rude"), (b, "calm")):
        rows = [{"prompt_id": p["id"], "subset": p["subset"], "sample": 0, "text": f" a {word} reply {i}"}
                for i, p in enumerate(prompts)]
        write_jsonl(gens / f"{name}.jsonl", rows)
        tox = 0.9 if word == "rude" else 0.1
        write_jsonl(scores / f"{name}.jsonl", [{**r, "judges": {"j1": tox, "j2": 1 - tox}} for r in rows])
    labels = tmp_path / "human_eval.jsonl"
    args = ["--mode", "eval", "--eval-prompts", str(tmp_path / "eval_prompts.jsonl"), "--generations", str(gens),
            "--labels", str(labels)]
    with label_server(args, ROOT, cli_env()) as (_, url), browser() as br:
        page = br.new_page()
        page.goto(url)
        page.fill("#annotator", "carol")
        page.keyboard.press("Enter")
        wait_progress(page, 0, 3)  # the challenging prompts only
        for i in range(3):
            html = page.content()
            assert a not in html.replace("challenging", "") and b not in html  # no model names on the page
            # pick the calm one on the first two pairs, a tie on the third
            if i < 2:
                side = "ArrowLeft" if "calm" in page.inner_text("#left") else "ArrowRight"
            else:
                side = "t"
            page.keyboard.press(side)
            wait_progress(page, i + 1, 3)
    m = human_eval(tmp_path / "eval_prompts.jsonl", gens, scores, labels, tmp_path / "m.json", params)
    assert m["tasks"] == 3 and m["labels"] == 3 and m["choices"] == {"a": 0, "b": 2, "tie": 1, "skip": 0}
    assert m["win_rate_b"]["value"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["judge_agreement"]["j1"]["value"] == 1.0 and m["judge_agreement"]["j2"]["value"] == 0.0
    assert m["judge_agreement"]["j1"]["n"] == 2  # ties are not decided choices
    assert len(eval_tasks(params, tmp_path / "eval_prompts.jsonl", gens)) == 3
    # Retrained models write other texts: the old labels are stale, kept and not used.
    write_jsonl(gens / f"{b}.jsonl", [{"prompt_id": p["id"], "subset": p["subset"], "sample": 0, "text": " new"}
                                      for p in prompts])
    m = human_eval(tmp_path / "eval_prompts.jsonl", gens, scores, labels, tmp_path / "m.json", params)
    assert m["stale_labels"] == 3 and m["status"] == "no usable human labels" and len(read_labels(labels)) == 3


def test_labels_file_errors_name_the_line_and_an_append_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "human.jsonl"
    good = {"pair_id": "p1", "sha": "abc", "mode": "pairs", "choice": "a", "left": "b", "annotator": "x",
            "time": "2026-11-27T10:00:00+00:00", "source": "page"}
    cases = [("{not json", "not valid JSON"), (json.dumps({**good, "choice": "left"}), "'choice' must be one of"),
             (json.dumps({k: v for k, v in good.items() if k != "sha"}), "missing key(s) ['sha']"),
             (json.dumps({**good, "time": "yesterday"}), "ISO 8601"),
             (json.dumps(good) + "\n" + json.dumps(good), "already labelled pair 'p1' at line 1")]
    for text, message in cases:
        path.write_text(text + "\n")
        with pytest.raises(DetoxError, match=r"human\.jsonl:\d+: ") as err:
            read_labels(path)
        assert message in str(err.value)

    path.unlink()
    store = LabelStore(path, "pairs", pool_tasks(POOL))
    store.add(POOL[0]["id"], pool_tasks(POOL)[0]["sha"], "b", "a", "x")
    before = path.read_bytes()
    import os

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # the write fails before the rename
    with pytest.raises(OSError):
        store.add(POOL[1]["id"], pool_tasks(POOL)[1]["sha"], "a", "a", "x")
    assert path.read_bytes() == before and not list(tmp_path.glob(".human.jsonl.tmp-*"))


@pytest.mark.slow
def test_label_studio_export_and_import(tmp_path, pool_file):
    env = cli_env()
    out = run(["detoxrl", "label-studio", "export", str(tmp_path / "tasks.json"), "--pool", str(pool_file)],
              ROOT, env=env)
    assert "4 Label Studio tasks" in out
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert "<Pairwise name=\"comparison\" toName=\"answer1,answer2\"/>" in (tmp_path / "tasks.xml").read_text()
    assert [t["data"]["answer1"] for t in tasks] == [r["responses"][0] for r in POOL]
    # Label Studio's JSON export of those tasks, annotated: selected left = answer1 = a.
    export = []
    for i, (t, sel) in enumerate(zip(tasks, ["left", "right", None, "right"])):
        ann = {"id": 100 + i, "completed_by": {"id": 7, "email": "dana@example.org"},
               "created_at": "2026-11-27T09:00:00.000000Z", "was_cancelled": sel is None,
               "result": [] if sel is None else [{"from_name": "comparison", "to_name": "answer1,answer2",
                                                  "type": "pairwise", "value": {"selected": sel}}]}
        export.append({"id": i + 1, "data": t["data"], "annotations": [ann]})
    (tmp_path / "export.json").write_text(json.dumps(export))
    labels = tmp_path / "human.jsonl"
    out = run(["detoxrl", "label-studio", "import", str(tmp_path / "export.json"), "--pool", str(pool_file),
               "--labels", str(labels)], ROOT, env=env)
    assert "4 labels from 4 tasks (1 cancelled" in out
    got = read_labels(labels)
    assert [x["choice"] for x in got] == ["a", "b", "skip", "b"]
    assert {x["annotator"] for x in got} == {"label-studio:dana@example.org"}
    # Importing again is refused whole: nothing is appended twice.
    before = labels.read_bytes()
    proc = run(["detoxrl", "label-studio", "import", str(tmp_path / "export.json"), "--pool", str(pool_file),
                "--labels", str(labels)], ROOT, check=False, env=env)
    assert "already labelled pair" in proc and labels.read_bytes() == before
    # Malformed exports name the task.
    bad = [dict(export[0], annotations=[dict(export[0]["annotations"][0], result=[{"type": "pairwise",
                                                                                     "value": {"selected": "up"}}])])]
    with pytest.raises(DetoxError, match=r"x\.json: task 1: annotation 100: expected one pairwise result"):
        import_label_studio(bad, "x.json", pool_tasks(POOL), "pairs")
    with pytest.raises(DetoxError, match=r"task 1: data.pair_id 'zzz' is not a pairs task"):
        import_label_studio([{"id": 1, "data": {"pair_id": "zzz"}}], "x.json", pool_tasks(POOL), "pairs")


def test_human_pairs_majority_split_votes_stale_labels_and_dpo_records(tmp_path, pool_file):
    from detoxrl.training.human_pairs import human_pairs

    params = load_params(ROOT / "params.yaml")
    tasks = pool_tasks(POOL)
    store = LabelStore(tmp_path / "human.jsonl", "pairs", tasks)
    votes = {0: {"x": "a", "y": "a", "z": "b"}, 1: {"x": "b", "y": "a"}, 2: {"x": "b", "y": "tie"}, 3: {"x": "skip"}}
    for i, by in votes.items():
        for who, choice in by.items():
            store.add(tasks[i]["pair_id"], tasks[i]["sha"], choice, "a", who)
    with open(tmp_path / "human.jsonl", "a") as fh:  # a label of texts pref_gen no longer makes
        fh.write(json.dumps({"pair_id": tasks[0]["pair_id"], "sha": "stale000", "mode": "pairs", "choice": "b",
                             "left": "a", "annotator": "w", "time": "2026-11-27T10:00:00+00:00",
                             "source": "page"}) + "\n")
    m = human_pairs(pool_file, tmp_path / "human.jsonl", tmp_path / "out", tmp_path / "m.json", params)
    assert m["labels"] == 9 and m["stale_labels"] == 1 and m["dropped_split_votes"] == 1
    assert m["pairs"] == 2 and m["choices"] == {"a": 3, "b": 3, "tie": 1, "skip": 1}
    pairs = read_jsonl(tmp_path / "out" / "human_pairs.jsonl") + read_jsonl(tmp_path / "out" / "human_pairs_val.jsonl")
    by_id = {p["id"]: p for p in pairs}
    assert by_id[POOL[0]["id"]]["chosen"] == POOL[0]["responses"][0] and by_id[POOL[0]["id"]]["votes"] == 3
    assert by_id[POOL[2]["id"]]["chosen"] == POOL[2]["responses"][1]
    assert all(p["grader"] == "human" and p["prompt"] for p in pairs)
    # x, y agree on pair 0 and disagree on pair 1; (x,z),(y,z) disagree on pair 0: 1 of 4 pairs of annotators.
    assert m["annotator_agreement"] == pytest.approx(1 / 4)
    none = human_pairs(pool_file, tmp_path / "missing.jsonl", tmp_path / "o2", tmp_path / "m2.json", params)
    assert none["status"] == "no human labels" and read_jsonl(tmp_path / "o2" / "human_pairs.jsonl") == []
