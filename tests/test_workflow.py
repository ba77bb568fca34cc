"""The experiment workflow of the README on the smoke pipeline, with real DVC, real Chromium and a real S3 server.

All tests share the session's smoke workspace (tests/conftest.py: built once by `dvc repro`, committed on `main`)
and reset it to that baseline first. In order: `dvc exp run -S` reruns only what changed; the README tutorial
(branch, change PPO's KL penalty, repro, `dvc metrics diff main`, `dvc plots diff main`) with the plots page
rendered in headless Chromium; `dvc push`/`dvc pull` through an S3-compatible server (moto) on 127.0.0.1; a queued
2-experiment sweep promoted with `dvc exp branch`; `detoxrl check-repro`.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import GIT_ID, ROOT, SmokeWorkspace, cli_env, run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke")]  # one worker holds the smoke workspace

PPO_CHAIN = {"ppo", "generate@ppo", "evaluate@ppo", "chat_eval@ppo", "human_eval", "report"}
DPO_CHAIN = {"dpo", "pref_eval", "generate@dpo", "evaluate@dpo", "report"}
UPSTREAM = {"base_model", "prepare", "sft"}
OFFLINE_TEMPLATE = ROOT / ".cache" / "plots-offline.html"  # `make setup` writes it (detoxrl plots-template)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture()
def ws(smoke_workspace) -> SmokeWorkspace:
    smoke_workspace.reset()
    assert "up to date" in run(["dvc", "status"], smoke_workspace.path)
    yield smoke_workspace
    run(["git", "checkout", "-q", "-f", "main"], smoke_workspace.path)
    smoke_workspace.reset()


def downstream(repo: Path, stage: str) -> set[str]:
    """The stage and every stage that depends on it, from DVC's own graph (new stages included)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
        # stage names, not `addressing` (a path relative to the test's cwd, outside this repo)
        node = next(s for s in graph if getattr(s, "name", None) == stage)
        return {stage} | {s.name for s in nx.ancestors(graph, node) if getattr(s, "name", None)}


def test_exp_run_set_param_reruns_only_the_changed_stages(ws):
    repo = ws.path
    assert downstream(repo, "ppo") >= PPO_CHAIN and downstream(repo, "dpo") >= DPO_CHAIN
    out = run(["dvc", "exp", "run", "-S", "dpo.beta=0.05"], repo)
    # dpo and the stages that read dpo.beta rerun; downstream stages whose deps came out unchanged are skipped
    # by DVC (e.g. evaluate@dpo when the 2-step smoke DPO samples the same continuations).
    assert {"dpo", "pref_eval"} <= ran(out) <= downstream(repo, "dpo"), out
    assert not ran(out) & (UPSTREAM | {"ppo"})
    assert json.loads((repo / "metrics" / "dpo.json").read_text())["beta"] == 0.05
    ws.reset()

    out = run(["dvc", "exp", "run", "-S", "ppo.lr=1e-5"], repo)
    assert {"ppo", "report"} <= ran(out) <= PPO_CHAIN, out
    for stage in UPSTREAM | {"dpo", "pref_eval", "generate@base", "evaluate@base"}:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "up to date" in run(["dvc", "status"], repo)

    # Both runs are experiments now; `dvc exp show` lists them with the changed param.
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv", "--only-changed"], repo)
    assert "ppo.lr" in shown and "dpo.beta" in shown and "1e-05" in shown

    # An invalid value fails with the schema's one line, before any training.
    proc = subprocess.run(["dvc", "exp", "run", "-S", "ppo.kl.target=-1"], cwd=repo, env=cli_env(),
                          capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert "error: params.yaml: ppo.kl.target: Input should be greater than 0" in text
    assert "Running stage 'ppo'" in text and "Running stage 'generate@ppo'" not in text


def _chromium(args: list[str], tmp: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"  # a fresh profile each start
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _require_chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not found: .ci/run installs Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    if not OFFLINE_TEMPLATE.exists():
        pytest.fail(f"{OFFLINE_TEMPLATE} missing: run `make setup` (it runs `detoxrl plots-template`, needs npm)")


def assert_page_renders_charts(page: Path, tmp: Path) -> int:
    """Open a `dvc plots` page in headless Chromium: every Vega chart drew a canvas, and the screenshot has ink."""
    html = page.read_text()
    charts = html.count("vegaEmbed(")
    assert charts > 0, "no Vega plots on the page"
    assert "cdn.jsdelivr.net" not in html  # the offline template: no network needed
    dom = _chromium(["--dump-dom", page.as_uri()], tmp)
    assert dom.returncode == 0, dom.stderr[-2000:]
    canvases = len(re.findall(r'<canvas[^>]*class="marks"', dom.stdout))
    assert canvases == charts, f"{canvases} of {charts} Vega charts rendered"
    shot = tmp / f"{page.parent.name}.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", page.as_uri()], tmp)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    ink = sum(1 for p in img.getdata() if p < 200) / (img.width * img.height)
    assert ink > 0.01, f"screenshot {shot} is almost blank ({ink:.3%} dark pixels)"
    return canvases


def test_tutorial_branch_change_kl_repro_and_diff_against_main(ws, tmp_path):
    """The README tutorial, command by command, on the smoke profile."""
    _require_chromium()
    repo = ws.path
    run(["git", "checkout", "-q", "-b", "ppo-kl-0.5"], repo)
    out = run(["dvc", "exp", "run", "-S", "ppo.kl.coef=0.5"], repo)
    assert ran(out) == PPO_CHAIN, out  # ppo's samples change, so generate@ppo and evaluate@ppo rerun too
    run(["git", *GIT_ID, "commit", "-qam", "PPO with a stronger KL penalty (coef 0.5)"], repo)

    diff = json.loads(run(["dvc", "metrics", "diff", "main", "--json"], repo))
    changed = {(path, key) for path, keys in diff.items() for key in keys}
    assert ("metrics/ppo.json", "objective_kl_coef") in changed
    assert diff["metrics/ppo.json"]["objective_kl_coef"] == {"old": 0.05, "new": 0.5, "diff": 0.45}
    tox = {key for path, key in changed if path == "metrics/eval/ppo.json" and "toxicity" in key}
    assert tox, f"no toxicity number of ppo changed: {sorted(changed)}"
    assert not any(path.startswith("metrics/eval/") and not path.endswith("ppo.json") for path, _ in changed)
    table = run(["dvc", "metrics", "diff", "main", "--no-path", "--precision", "3"], repo)
    assert "expected_max_toxicity" in table

    page_dir = tmp_path / "diff"
    run(["dvc", "plots", "diff", "main", "--html-template", str(OFFLINE_TEMPLATE), "-o", str(page_dir)], repo)
    page = page_dir / "index.html"
    html = page.read_text()
    assert "main" in html and "workspace" in html  # both revisions are on the page
    assert assert_page_renders_charts(page, tmp_path) >= 4

    show_dir = tmp_path / "show"
    run(["dvc", "plots", "show", "--html-template", str(OFFLINE_TEMPLATE), "-o", str(show_dir)], repo)
    assert_page_renders_charts(show_dir / "index.html", tmp_path)

    # Control: DVC's default page loads Vega from a CDN that is unreachable here; no chart renders. So the
    # check above does tell a rendered page from an empty one.
    cdn_dir = tmp_path / "cdn"
    run(["dvc", "plots", "show", "-o", str(cdn_dir)], repo)
    dom = _chromium(["--dump-dom", (cdn_dir / "index.html").as_uri()], tmp_path)
    assert '<canvas' not in dom.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3_server(tmp_path):
    """A real S3-compatible server (moto in server mode) on 127.0.0.1 with one empty bucket."""
    port = _free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="AKIDTEST", aws_secret_access_key="s3cr3t-test",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="detoxrl-team")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_checkpoints_push_to_s3_and_pull_back_byte_identical(ws, s3_server, tmp_path):
    repo = ws.path
    # The team's setup, committed: remote URL and endpoint. Credentials only in .dvc/config.local.
    run(["dvc", "remote", "add", "s3", "s3://detoxrl-team/dvcstore"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server], repo)
    run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", "AKIDTEST"], repo)
    run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", "s3cr3t-test"], repo)
    config = (repo / ".dvc" / "config").read_text()
    assert "s3cr3t-test" not in config and "AKIDTEST" not in config
    assert "s3cr3t-test" in (repo / ".dvc" / "config.local").read_text()
    run(["git", *GIT_ID, "commit", "-qam", "S3 remote for checkpoints"], repo)
    pushed = run(["dvc", "push", "-r", "s3"], repo)
    assert re.search(r"\d+ files? pushed", pushed), pushed

    # A teammate's fresh clone: no DVC cache, no outputs; the same credentials, locally.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", "AKIDTEST"], clone)
    run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", "s3cr3t-test"], clone)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "models").exists()

    # Partial pull: one stage's checkpoint only.
    run(["dvc", "pull", "-r", "s3", "ppo"], clone)
    assert (clone / "models" / "ppo").is_dir()
    assert not (clone / "models" / "base").exists() and not (clone / "models" / "dpo").exists()
    assert _files(clone / "models" / "ppo") == _files(repo / "models" / "ppo")
    match, mismatch, errors = filecmp.cmpfiles(repo / "models" / "ppo", clone / "models" / "ppo",
                                               [str(p) for p in _files(repo / "models" / "ppo")], shallow=False)
    assert not mismatch and not errors and match

    # Everything else; then the clone is the workspace that pushed, byte for byte, and nothing reruns.
    run(["dvc", "pull", "-r", "s3"], clone)
    assert "up to date" in run(["dvc", "status"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone)
    for out in ("models/base", "models/sft", "models/dpo", "models/ppo", "data/processed", "data/generations"):
        files = [str(p) for p in _files(repo / out)]
        match, mismatch, errors = filecmp.cmpfiles(repo / out, clone / out, files, shallow=False)
        assert not mismatch and not errors and len(match) == len(files), out


def test_queued_sweep_runs_and_best_experiment_becomes_a_branch(ws):
    repo = ws.path
    run(["dvc", "exp", "run", "--queue", "-S", "ppo.lr=1e-4,3e-4", "-S", "ppo.kl.coef=0.1"], repo)
    queued = run(["dvc", "queue", "status"], repo)
    assert queued.count("Queued") == 2, queued
    run(["dvc", "queue", "start", "--jobs", "1"], repo)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    else:
        pytest.fail(f"queue did not finish:\n{status}")
    assert status.count("Success") == 2, status
    run(["dvc", "queue", "stop", "--kill"], repo, check=False)

    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo))
    exps = []
    for row in rows:
        for exp_rev in row.get("experiments") or []:
            rev = exp_rev["revs"][0]
            data = rev["data"]
            metrics = data["metrics"]["metrics/eval/ppo.json"]["data"]
            params = data["params"]["params.yaml"]["data"]["ppo"]
            exps.append((metrics["toxicity"]["overall"]["expected_max_toxicity"]["value"], rev["name"],
                         params["lr"], params["kl"]["coef"]))
    swept = {(lr, coef) for _, _, lr, coef in exps}
    assert {(1e-4, 0.1), (3e-4, 0.1)} <= swept, exps
    best = min(e for e in exps if (e[2], e[3]) in swept)
    run(["dvc", "exp", "branch", best[1], "best-ppo"], repo)
    ppo = yaml.safe_load(run(["git", "show", "best-ppo:params.yaml"], repo))["ppo"]
    assert (ppo["lr"], ppo["kl"]["coef"]) == (best[2], best[3])
    assert "metrics/eval/ppo.json" in run(["git", "show", "--stat", "best-ppo"], repo)
    run(["git", "branch", "-D", "best-ppo"], repo)
    run(["dvc", "exp", "remove", "--all-commits", "--queue"], repo, check=False)


def test_check_repro_reruns_a_stage_and_matches_the_committed_metrics(ws):
    repo = ws.path
    out = run(["detoxrl", "check-repro", "ppo"], repo)
    assert "ppo: reproduced" in out and "identical" in out, out
    assert "metrics/ppo.json:time_step_s" in out  # wall-clock, named as not compared
    assert "up to date" in run(["dvc", "status"], repo)
    out = run(["detoxrl", "check-repro", "evaluate@ppo"], repo)
    assert "evaluate@ppo: reproduced" in out and "identical" in out, out


def test_check_repro_on_another_cpu_kind_compares_within_the_confidence_intervals(ws):
    """The committed metrics record their CPU kind; a rerun on another kind (played here by PyTorch's AVX2 kernels,
    ATEN_CPU_CAPABILITY=avx2, which also makes ppo.mixed_precision auto take fp32) is not held to identical bits: the
    headline metrics must lie in their committed CIs, and a stage without CIs says it cannot be compared."""
    repo = ws.path
    committed = json.loads((repo / "metrics" / "eval" / "ppo.json").read_text())["platform"]
    avx2 = {**cli_env(), "ATEN_CPU_CAPABILITY": "avx2"}
    out = run(["detoxrl", "check-repro", "evaluate@ppo"], repo, env=avx2)
    assert f"the committed metrics come from {committed['cpu_kind']}" in out and "/AVX2" in out, out
    assert "evaluate@ppo: reproduced within the confidence intervals" in out, out
    rerun = json.loads((repo / "metrics" / "eval" / "ppo.json").read_text())["platform"]
    assert "/AVX2" in rerun["cpu_kind"] and rerun["cpu_kind"] != committed["cpu_kind"]

    out = run(["detoxrl", "check-repro", "ppo"], repo, env=avx2)
    assert "ppo: not comparable across CPU kinds" in out, out
    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())["platform"]
    assert ppo["precision"] == "none" and "AVX2 kernels" in ppo["precision_reason"]


def test_a_base_model_without_chat_template_runs_the_whole_pipeline(ws, tmp_path):
    """GPT-2-style base model (no chat template, Conv1D layers, `transformer.h` blocks) with `chat_format: hh`:
    every stage of the smoke pipeline runs on it, and each formats chats with the HH turns saved in models/base."""
    from tiny import build_tiny_gpt2

    repo = ws.path
    gpt2 = build_tiny_gpt2(repo / "models" / "base", tmp_path / "gpt2")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_model"].update(source=f"local:{gpt2}", chat_format="hh")
    gpt2_modules = ["c_attn", "c_proj", "c_fc"]
    for stage in ("sft", "dpo", "dpo_feedback", "reward_model", "ppo"):
        params[stage]["lora"]["target_modules"] = gpt2_modules
    # the RM on the base model too (a decoder reading the HH template), not the default MiniLM encoder
    params["reward_model"]["backbone"] = "base"
    params["reward_model"]["lora"]["enabled"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo)
    assert {"base_model", "prepare", "sft", "dpo", "reward_model", "ppo", "pref_eval", "generate@ppo",
            "evaluate@ppo", "pref_gen", "dpo_feedback@rlaif", "chat_eval@ppo", "report"} <= ran(out), out
    assert json.loads((repo / "models" / "reward" / "detoxrl_reward.json").read_text())["format"] == "chat"
    prov = json.loads((repo / "models" / "base" / "provenance.json").read_text())
    assert prov["chat_format"] == "hh" and prov["source"] == f"local:{gpt2}"
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(repo / "models" / "ppo").model_type == "gpt2"
    for model_dir in ("sft", "ppo", "reward"):  # the HH template travelled with every model the stages wrote
        tok = AutoTokenizer.from_pretrained(repo / "models" / model_dir)
        assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                       tokenize=False) == "\n\nHuman: x\n\nAssistant:"
    assert json.loads((repo / "metrics" / "ppo.json").read_text())["steps"] == params["ppo"]["steps"]
    for name in ("base", "sft", "dpo", "ppo"):
        ev = json.loads((repo / "metrics" / "eval" / f"{name}.json").read_text())
        assert 0 <= ev["toxicity"]["overall"]["expected_max_toxicity"]["value"] <= 1


def test_exp_run_with_two_processes(ws):
    """`dvc exp run -S compute.num_processes=2` as the README shows it: the training stages and generation re-launch
    themselves under `accelerate launch` (2 CPU processes, gloo), the main process alone writes, and the metrics
    files keep their schema. The smoke profile's batches of 1 are doubled so that 2 processes can share them."""
    repo = ws.path
    before = {f: json.loads((repo / "metrics" / f).read_text()) for f in ("ppo.json", "sft.json", "eval/ppo.json")}
    out = run(["dvc", "exp", "run", "-S", "compute.num_processes=2", "-S", "sft.grad_accum=2", "-S", "dpo.grad_accum=2",
               "-S", "reward_model.grad_accum=2"], repo)
    assert {"sft", "dpo", "reward_model", "ppo", "generate@base", "generate@ppo", "evaluate@ppo", "report"} <= ran(out)
    assert out.count("ppo: precision") == 1 and "2 process(es)" in out, out  # one main process speaks
    assert "evaluate: 2 processes" in out and out.count("ppo: expected max toxicity") == 1, out
    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())
    assert ppo["processes"] == 2 and set(ppo) == set(before["ppo.json"])
    sft = json.loads((repo / "metrics" / "sft.json").read_text())
    assert sft["platform"]["processes"] == 2 and set(sft) == set(before["sft.json"])
    ev = json.loads((repo / "metrics" / "eval" / "ppo.json").read_text())
    assert set(ev) == set(before["eval/ppo.json"]) and ev["n_prompts"] == before["eval/ppo.json"]["n_prompts"]
    rows = [json.loads(line) for line in (repo / "data" / "generations" / "ppo.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["id"] for line in (repo / "data/processed/eval_prompts.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [i for i in prompts for _ in range(2)]  # gathered back in prompt order
    for curve in ("plots/ppo/plots/metrics/reward/score_mean.tsv", "plots/sft/plots/metrics/train/loss.tsv"):
        steps = [line.split("\t")[0] for line in (repo / curve).read_text().splitlines()[1:]]
        assert len(steps) == len(set(steps)), curve  # one writer: no step logged twice


HUMAN_LINES = ("  # human: {", "  # rlaif_human: {", "  # dpo_human: ", "  # dpo_rlaif_human: ")


def test_labels_clicked_in_the_browser_train_dpo_human_and_reach_the_report(ws):
    """The README's human-label path on the smoke pipeline, with labels this test clicks in headless Chromium."""
    from browser import browser, label_server, wait_progress
    from detoxrl.data.labels import read_labels, pool_tasks
    from detoxrl.io import read_jsonl

    repo = ws.path
    pool = pool_tasks(read_jsonl(repo / "data" / "feedback" / "human_pool.jsonl"))
    n_eval = json.loads((repo / "metrics" / "human_eval.json").read_text())["tasks"]
    try:
        with browser() as b:
            for mode, n, keys in (("pairs", len(pool), ["ArrowLeft", "ArrowRight"]),
                                  ("eval", n_eval, ["ArrowLeft", "ArrowRight", "t"])):
                with label_server(["--mode", mode], repo, cli_env()) as (_, url):
                    page = b.new_page()
                    page.goto(url)
                    page.fill("#annotator", "ci")
                    page.keyboard.press("Enter")
                    wait_progress(page, 0, n)
                    for i in range(n):
                        page.keyboard.press(keys[i % len(keys)])
                        wait_progress(page, i + 1, n)
        people = read_labels(repo / "data" / "labels" / "human.jsonl")
        judged = read_labels(repo / "data" / "labels" / "human_eval.jsonl")
        assert len(people) == len(pool) and {x["choice"] for x in people} <= {"a", "b"}
        assert len(judged) == n_eval and "tie" in {x["choice"] for x in judged}

        # README, "Human labels": track the labels with DVC, uncomment the human runs and models, repro.
        run(["dvc", "add", "-q", "data/labels/human.jsonl", "data/labels/human_eval.jsonl"], repo)
        text = (repo / "params.yaml").read_text()
        for line in HUMAN_LINES:
            assert line in text, line
            text = text.replace(line, line.replace("# ", "", 1))
        (repo / "params.yaml").write_text(text)
        out = run(["dvc", "repro"], repo)
        assert {"human_pairs", "dpo_feedback@human", "dpo_feedback@rlaif_human", "generate@dpo_human",
                "evaluate@dpo_human", "evaluate@dpo_rlaif_human", "human_eval", "report"} <= ran(out), out
        assert not ran(out) & (UPSTREAM | {"ppo", "dpo", "label_ai", "dpo_feedback@rlaif"})

        hl = json.loads((repo / "metrics" / "human_labels.json").read_text())
        assert hl["labels"] == len(pool) and hl["pairs"] == len(pool) and hl["annotators"] == ["ci"]
        assert hl["train_pairs"] + hl["val_pairs"] == len(pool)
        assert json.loads((repo / "metrics" / "dpo_human.json").read_text())["judges_in_reward"] == ["human"]
        he = json.loads((repo / "metrics" / "human_eval.json").read_text())
        win = [{"a": 0.0, "b": 1.0, "tie": 0.5}[x["choice"]] for x in judged]
        assert he["status"] == "ok" and he["win_rate_b"]["value"] == pytest.approx(sum(win) / len(win))
        assert set(he["judge_agreement"]) >= {"offline", "perspective_distilled"}
        report_md = (repo / "reports" / "report.md").read_text()
        assert "| dpo_human |" in report_md and "| dpo_rlaif_human |" in report_md
        assert f"Preference labels: {len(pool)} from 1 annotator(s)" in report_md
        assert f"win rate (ties count half): {he['win_rate_b']['value']:.3f} [" in report_md
        # dpo_rlaif_human started from dpo_rlaif: the AI grader's judge is in its training signal too.
        summary = json.loads((repo / "metrics" / "summary.json").read_text())
        assert summary["models"]["dpo_rlaif_human"]["judges_in_reward"] == ["human", "perspective_distilled"]
        assert "up to date" in run(["dvc", "status"], repo)
    finally:  # untracked labels would change the next test's baseline
        for path in (repo / "data" / "labels").glob("human*"):
            path.unlink()
