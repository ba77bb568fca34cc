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

from conftest import GIT_ID, ROOT, cli_env, run

pytestmark = pytest.mark.slow

# The smoke profile's training seeds: each `seeded:` method is trained (ppo@<seed>) and generated, evaluated and
# chat-evaluated (<stage>_seeded@<method>-<seed>) once per seed (dvc.yaml's matrix stages).
SEEDS = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())["seeds"]
PPO_TRAIN = {f"ppo@{seed}" for seed in SEEDS}
# human_eval reads ppo/s0 (params.yaml human_eval.model_b); the report reads every seed
PPO_CHAIN = PPO_TRAIN | {f"{stage}_seeded@ppo-{seed}" for stage in ("generate", "evaluate", "chat_eval")
                         for seed in SEEDS} | {"human_eval", "report"}
DPO_CHAIN = {"dpo", "pref_eval", "generate@dpo", "evaluate@dpo", "report"}
UPSTREAM = {"base_model", "prepare", "sft"}
OFFLINE_TEMPLATE = ROOT / ".cache" / "plots-offline.html"  # `make setup` writes it (detoxrl plots-template)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


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
    assert len(SEEDS) >= 2 and {"ppo@1", "evaluate_seeded@ppo-1", "chat_eval_seeded@ppo-1"} <= PPO_CHAIN
    assert set().union(*(downstream(repo, s) for s in PPO_TRAIN)) >= PPO_CHAIN and downstream(repo, "dpo") >= DPO_CHAIN
    assert "human_eval" in downstream(repo, "evaluate_seeded@ppo-0") and "human_eval" not in downstream(repo, "ppo@1")
    out = run(["dvc", "exp", "run", "-S", "dpo.beta=0.05"], repo)
    # dpo and the stages that read dpo.beta rerun; downstream stages whose deps came out unchanged are skipped
    # by DVC (e.g. evaluate@dpo when the 2-step smoke DPO samples the same continuations).
    # check_params reruns on any params change (it reads the whole file); its output does not change
    assert {"dpo", "pref_eval", "check_params"} <= ran(out) <= downstream(repo, "dpo") | {"check_params"}, out
    assert not ran(out) & (UPSTREAM | PPO_TRAIN)
    assert json.loads((repo / "metrics" / "dpo.json").read_text())["beta"] == 0.05
    for stage in UPSTREAM | {"ppo@0", "generate@base", "evaluate@base"}:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "up to date" in run(["dvc", "status"], repo)
    # (a PPO param and every seed's retraining: the tutorial test below, `dvc exp run -S ppo.kl.coef=0.5`)

    # The run is an experiment now; `dvc exp show` lists it with the changed param.
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv", "--only-changed"], repo)
    assert "dpo.beta" in shown and "0.05" in shown, shown

    # An invalid value fails with the schema's one line, before any training.
    proc = subprocess.run(["dvc", "exp", "run", "-S", "ppo.kl.target=-1"], cwd=repo, env=cli_env(),
                          capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert "error: params.yaml: ppo.kl.target: Input should be greater than 0" in text
    assert ran(text) == {"check_params"}, text  # the pipeline's first stage fails, nothing after it


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
    # every seed retrains; its samples change, so generate/evaluate/chat_eval rerun (and the params check, as always)
    assert ran(out) == PPO_CHAIN | {"check_params"}, out
    for stage in UPSTREAM | {"dpo", "pref_eval", "generate@base", "evaluate@base", "grpo@0"}:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "up to date" in run(["dvc", "status"], repo)
    run(["git", *GIT_ID, "commit", "-qam", "PPO with a stronger KL penalty (coef 0.5)"], repo)

    diff = json.loads(run(["dvc", "metrics", "diff", "main", "--json"], repo))
    changed = {(path, key) for path, keys in diff.items() for key in keys}
    for seed in SEEDS:
        assert (f"metrics/ppo/s{seed}.json", "objective_kl_coef") in changed
        assert diff[f"metrics/ppo/s{seed}.json"]["objective_kl_coef"] == {"old": 0.05, "new": 0.5, "diff": 0.45}
        tox = {key for path, key in changed if path == f"metrics/eval/ppo/s{seed}.json" and "toxicity" in key}
        assert tox, f"no toxicity number of ppo/s{seed} changed: {sorted(changed)}"
    assert not any(path.startswith("metrics/eval/") and not path.startswith("metrics/eval/ppo/") for path, _ in changed)
    # the report's ppo row (the mean over the seeds) moved with them
    assert any(path == "metrics/summary.json" and key.startswith("models.ppo.") and "toxicity" in key
               for path, key in changed), sorted(changed)
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

    # Partial pull: one stage's checkpoint only (seed 0's PPO model, not seed 1's).
    run(["dvc", "pull", "-r", "s3", "ppo@0"], clone)
    assert (clone / "models" / "ppo" / "s0").is_dir() and not (clone / "models" / "ppo" / "s1").exists()
    assert not (clone / "models" / "base").exists() and not (clone / "models" / "dpo").exists()
    ppo0 = Path("models") / "ppo" / "s0"
    assert _files(clone / ppo0) == _files(repo / ppo0)
    match, mismatch, errors = filecmp.cmpfiles(repo / ppo0, clone / ppo0, [str(p) for p in _files(repo / ppo0)],
                                               shallow=False)
    assert not mismatch and not errors and match

    # Everything else; then the clone is the workspace that pushed, byte for byte, and nothing reruns.
    run(["dvc", "pull", "-r", "s3"], clone)
    assert "up to date" in run(["dvc", "status"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone)
    for out in ("models/base", "models/sft", "models/dpo", "models/ppo", "models/dpo_rlaif", "data/processed",
                "data/generations"):  # models/ppo, models/dpo_rlaif: every seed's model
        files = [str(p) for p in _files(repo / out)]
        match, mismatch, errors = filecmp.cmpfiles(repo / out, clone / out, files, shallow=False)
        assert not mismatch and not errors and len(match) == len(files), out


def test_queued_sweep_runs_and_best_experiment_becomes_a_branch(ws):
    """docs/experiments.md's queued grid, on the moderation filter's knobs: two points whose reruns are the filter
    and its evaluation alone (a PPO grid works the same way, at 5 stages per seed per point)."""
    repo = ws.path
    run(["dvc", "exp", "run", "--queue", "-S", "filter.threshold=0.3,0.9", "-S", "filter.max_resamples=2"], repo)
    queued = run(["dvc", "queue", "status"], repo)
    assert queued.count("Queued") == 2, queued
    run(["dvc", "queue", "start", "--jobs", "1"], repo)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
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
            # the filter's headline: the report's row of the filtered model
            filtered = data["metrics"]["metrics/summary.json"]["data"]["models"]["sft_filtered"]
            assert filtered["interval"] == "1 run: prompts only", filtered
            params = data["params"]["params.yaml"]["data"]["filter"]
            exps.append((filtered["expected_max_toxicity"]["value"], rev["name"], params["threshold"],
                         params["max_resamples"]))
    swept = {(0.3, 2), (0.9, 2)}  # the queued grid's points (other tests' experiments may be listed too)
    assert swept <= {(threshold, r) for _, _, threshold, r in exps}, exps
    best = min(e for e in exps if (e[2], e[3]) in swept)
    run(["dvc", "exp", "branch", best[1], "best-filter"], repo)
    promoted = yaml.safe_load(run(["git", "show", "best-filter:params.yaml"], repo))["filter"]
    # float(): PyYAML (YAML 1.1) reads a float written without a dot, e.g. DVC's `3e-04`, as a string
    assert (float(promoted["threshold"]), promoted["max_resamples"]) == (best[2], best[3])
    stat = run(["git", "show", "--stat", "best-filter"], repo)
    assert "metrics/eval/sft_filtered.json" in stat and "metrics/summary.json" in stat, stat
    assert not any(f"metrics/eval/ppo/s{seed}.json" in stat for seed in SEEDS), stat  # nothing else reran
    run(["git", "branch", "-D", "best-filter"], repo)
    run(["dvc", "exp", "remove", "--all-commits", "--queue"], repo, check=False)


def test_check_repro_reruns_a_stage_and_matches_the_committed_metrics(ws):
    repo = ws.path
    out = run(["detoxrl", "check-repro", "ppo@0"], repo)
    assert "ppo@0: reproduced" in out and "identical" in out, out
    assert "metrics/ppo/s0.json:time_step_s" in out  # wall-clock, named as not compared
    assert "up to date" in run(["dvc", "status"], repo)
    out = run(["detoxrl", "check-repro", "evaluate_seeded@ppo-0"], repo)
    assert "evaluate_seeded@ppo-0: reproduced" in out and "identical" in out, out


def test_check_repro_on_another_cpu_kind_holds_a_seed_to_the_spread_over_seeds(ws):
    """The committed metrics record their CPU kind; a rerun on another kind (played here by PyTorch's AVX2 kernels,
    ATEN_CPU_CAPABILITY=avx2, which also makes ppo.mixed_precision auto take fp32) is not held to identical bits: the
    evaluation of one seed of a seeded method must lie in that method's committed spread over seeds (summary.json's
    one-run interval), and a stage without intervals says it cannot be compared."""
    repo = ws.path
    committed = json.loads((repo / "metrics" / "eval" / "ppo" / "s0.json").read_text())["platform"]
    avx2 = {**cli_env(), "ATEN_CPU_CAPABILITY": "avx2"}
    out = run(["detoxrl", "check-repro", "evaluate_seeded@ppo-0"], repo, env=avx2)
    assert f"the committed metrics come from {committed['cpu_kind']}" in out and "/AVX2" in out, out
    assert ("evaluate_seeded@ppo-0: reproduced within the spread over seeds: 3 headline metrics inside the committed "
            "one-run intervals") in out, out
    rerun = json.loads((repo / "metrics" / "eval" / "ppo" / "s0.json").read_text())["platform"]
    assert "/AVX2" in rerun["cpu_kind"] and rerun["cpu_kind"] != committed["cpu_kind"]

    out = run(["detoxrl", "check-repro", "ppo@0"], repo, env=avx2)
    assert "ppo@0: not comparable across CPU kinds" in out, out
    ppo = json.loads((repo / "metrics" / "ppo" / "s0.json").read_text())["platform"]
    assert ppo["precision"] == "none" and "AVX2 kernels" in ppo["precision_reason"]
