"""Profiles that stack (`extends:`), the uncommitted-change guard of `use-profile` and the recorded chain."""

import ast
import glob
import io
import json
import shutil
import subprocess

import pytest
import yaml
from conftest import GIT_ID, ROOT, committed_files
from typer.testing import CliRunner

from detoxrl import DetoxError, hardware
from detoxrl.schema import load_params
from detoxrl_tools import profiles
from detoxrl_tools.profiles import apply_profile, resolve_chain

PROFILES = ROOT / "profiles"


@pytest.fixture
def params(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    return target


def _profile(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_chain_resolves_base_first_and_applies_in_order(tmp_path, params):
    folder = tmp_path / "p"
    _profile(folder, "base.yaml", "sft:\n  lr: 1.0e-3\n  max_steps: 7\ndpo:\n  beta: 0.3\n")
    _profile(folder / "sub", "mid.yaml", "extends: ../base.yaml\nsft:\n  lr: 2.0e-3\n")
    top = _profile(folder / "sub", "top.yaml", "extends: mid.yaml\nsft:\n  lr: 3.0e-3\nppo:\n  steps: 5\n")
    chain = resolve_chain(top)
    assert [p.path.name for p in chain] == ["base.yaml", "mid.yaml", "top.yaml"]
    assert all("extends" not in p.overrides for p in chain)

    applied = apply_profile(params, top, committed=params.read_text())
    merged = load_params(params)
    assert (merged.sft.lr, merged.sft.max_steps, merged.dpo.beta, merged.ppo.steps) == (3.0e-3, 7, 0.3, 5)
    assert merged.prepare.seed == load_params(ROOT / "params.yaml").prepare.seed  # untouched keys kept
    assert applied.recorded == merged.profiles == ["base.yaml", "mid.yaml", "top.yaml"] and applied.note is None
    text = params.read_text()
    assert "\nprofiles: [base.yaml, mid.yaml, top.yaml]" in text  # the committed flow style kept
    assert "# held-out eval prompts drawn from the challenging subset" in text  # comments kept

    # each use-profile appends its chain
    again = apply_profile(params, folder / "base.yaml", committed=params.read_text())
    assert again.recorded == load_params(params).profiles == ["base.yaml", "mid.yaml", "top.yaml", "base.yaml"]


def test_gpu_profiles_name_gpu_1b_as_their_base():
    assert [p.path.name for p in resolve_chain(PROFILES / "gpu-r1-1.5b.yaml")] == ["gpu-1b.yaml", "gpu-r1-1.5b.yaml"]
    assert [p.path.name for p in resolve_chain(PROFILES / "gpu-8b-zero3.yaml")] == ["gpu-1b.yaml", "gpu-8b-zero3.yaml"]
    for name in ("gpu-r1-1.5b.yaml", "gpu-8b-zero3.yaml"):  # the header says the one command, not the two by hand
        header = (PROFILES / name).read_text().split("\nextends:")[0]
        assert f"detoxrl use-profile profiles/{name}`" in header and "&&" not in header


@pytest.mark.parametrize("name", sorted(p.name for p in PROFILES.glob("gpu-*.yaml")))
def test_gpu_profiles_evaluate_rtp_with_the_literature_protocol(params, name):
    """k = 25 samples per prompt, nucleus top-p 0.9, 20 new tokens (Gehman et al. 2020; DExperts Table 1)."""
    apply_profile(params, PROFILES / name, committed=params.read_text())
    g = load_params(params).generate
    assert (g.k, g.top_p, g.max_new_tokens) == (25, 0.9, 20)


def test_the_r1_profile_budgets_the_thinking_beside_the_20_answer_tokens(params):
    apply_profile(params, PROFILES / "gpu-r1-1.5b.yaml", committed=params.read_text())
    th = load_params(params).thinking
    assert th.delimiter == "</think>" and th.max_tokens == 512 and th.unclosed == "penalty"


@pytest.mark.parametrize("texts, culprit", [
    ({"a.yaml": "extends: a.yaml\nsft: {lr: 1.0}\n"}, "a.yaml"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: c.yaml\n", "c.yaml": "extends: a.yaml\n"}, "c.yaml"),
])
def test_a_cycle_fails_naming_the_file(tmp_path, params, texts, culprit):
    for name, text in texts.items():
        _profile(tmp_path / "p", name, text)
    before = params.read_text()
    with pytest.raises(DetoxError, match="cycle") as exc:
        apply_profile(params, tmp_path / "p" / "a.yaml", committed=None)
    assert str(exc.value).startswith(str(tmp_path / "p" / culprit)) and "\n" not in str(exc.value)
    assert params.read_text() == before


def test_a_missing_parent_fails_naming_the_file(tmp_path, params):
    child = _profile(tmp_path / "p", "child.yaml", "extends: nope.yaml\nsft: {lr: 1.0}\n")
    with pytest.raises(DetoxError) as exc:
        apply_profile(params, child, committed=None)
    msg = str(exc.value)
    assert msg == f"{tmp_path / 'p' / 'nope.yaml'}: profile not found (named by `extends:` in {child})"
    with pytest.raises(DetoxError, match=r"missing\.yaml: profile not found$"):
        resolve_chain(tmp_path / "p" / "missing.yaml")
    _profile(tmp_path / "p", "bad.yaml", "extends: [a, b]\n")
    with pytest.raises(DetoxError, match=r"bad\.yaml: `extends:` must be a profile file name"):
        resolve_chain(tmp_path / "p" / "bad.yaml")


def test_an_unknown_key_names_the_profile_of_the_chain_that_sets_it(tmp_path, params):
    _profile(tmp_path / "p", "base.yaml", "sft:\n  nope: 1\n")
    top = _profile(tmp_path / "p", "top.yaml", "extends: base.yaml\nsft:\n  lr: 1.0e-3\n")
    with pytest.raises(DetoxError, match=r"base\.yaml: sft\.nope: unknown key"):
        apply_profile(params, top, committed=None)


def _edit(path, **changes):
    """Set dotted keys in a params file through the round-trip loader (comments and layout kept)."""
    from ruamel.yaml import YAML

    rt = YAML()
    doc = rt.load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = doc
        for part in parents:
            node = node[part]
        node[key] = value
    buf = io.StringIO()
    rt.dump(doc, buf)
    path.write_text(buf.getvalue())
    return buf.getvalue()


def test_uncommitted_changes_are_refused_naming_the_keys_and_force_applies(tmp_path, params):
    committed = params.read_text()
    top = _profile(tmp_path / "p", "top.yaml", "sft:\n  lr: 3.0e-3\n  lora: {r: 4}\n")
    edited = _edit(params, sft__lr=0.5, prepare__seed=17)

    with pytest.raises(DetoxError) as exc:
        apply_profile(params, top, committed=committed)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{params}: not applied")
    assert "keys the profile would overwrite (sft.lr)" in msg and "others (prepare.seed)" in msg
    assert msg.endswith("pass --force to apply over them")
    assert params.read_text() == edited  # nothing written

    applied = apply_profile(params, top, force=True, committed=committed)
    assert "--force" in applied.note and "sft.lr" in applied.note
    merged = load_params(params)
    assert merged.sft.lr == 3.0e-3 and merged.sft.lora.r == 4 and merged.prepare.seed == 17
    assert merged.profiles == ["top.yaml"]


def test_a_change_the_profile_does_not_touch_is_refused_too(tmp_path, params):
    committed = params.read_text()
    top = _profile(tmp_path / "p", "top.yaml", "sft:\n  lr: 3.0e-3\n")
    params.write_text(committed.replace("profiles: []", "profiles: []  # edited"))
    with pytest.raises(DetoxError, match=r"uncommitted changes to comments or layout only;"):
        apply_profile(params, top, committed=committed)
    params.write_text(committed)
    _edit(params, prepare__seed=17)
    with pytest.raises(DetoxError, match=r"uncommitted changes \(prepare\.seed\), which the profile would not "):
        apply_profile(params, top, committed=committed)


def test_without_a_committed_baseline_it_applies_and_says_so(tmp_path, params):
    top = _profile(tmp_path / "p", "top.yaml", "sft:\n  lr: 3.0e-3\n")
    applied = apply_profile(params, top, committed=None)
    assert applied.note.startswith(f"{params}: no committed baseline (") and load_params(params).sft.lr == 3.0e-3


def test_cli_use_profile_refuses_then_force_applies(tmp_path, params, monkeypatch):
    from detoxrl.cli import app

    committed = params.read_text()
    _edit(params, prepare__seed=17)
    monkeypatch.setattr(profiles, "committed_text", lambda path: (committed, ""))
    runner = CliRunner()
    profile = str(PROFILES / "gpu-r1-1.5b.yaml")
    result = runner.invoke(app, ["use-profile", profile, "--params", str(params)])
    assert isinstance(result.exception, DetoxError) and "prepare.seed" in str(result.exception)
    result = runner.invoke(app, ["use-profile", profile, "--params", str(params), "--force"])
    assert result.exit_code == 0, result.output
    assert "gpu-1b.yaml then" in result.output and "--force" in result.output
    assert load_params(params).profiles == ["gpu-1b.yaml", "gpu-r1-1.5b.yaml"]


def test_every_profile_chain_applies_to_the_committed_params_and_validates(params, monkeypatch, tmp_path):
    from detoxrl.stages.check_params import app

    monkeypatch.chdir(ROOT)  # the accelerate configs a profile names are read from the repo root
    committed = params.read_text()
    for profile in sorted(PROFILES.glob("*.yaml")):
        params.write_text(committed)
        applied = apply_profile(params, profile, committed=committed)
        checked = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "ok.json")])
        assert checked.output == f"{params}: ok\n", (profile.name, checked.exception)
        merged = load_params(params)
        assert merged.profiles == [p.path.name for p in resolve_chain(profile)] == applied.recorded
        if profile.name in ("gpu-r1-1.5b.yaml", "gpu-8b-zero3.yaml"):  # gpu-1b's settings, then its own
            assert merged.profiles[0] == "gpu-1b.yaml" and merged.dpo.eval_steps == 25


def test_the_zero3_profile_trains_the_rm_under_zero3_and_runs_ppo_data_parallel(params, monkeypatch):
    from detoxrl.params import ComputeParams, deepspeed_setting, stage_compute

    monkeypatch.chdir(ROOT)
    apply_profile(params, PROFILES / "gpu-8b-zero3.yaml", committed=None)
    p = load_params(params)  # the compute checks included: this chain can run as written
    zero3 = "configs/accelerate/zero3-offload.yaml"
    assert stage_compute(p, "reward_model") == ComputeParams(num_processes=8, accelerate_config=zero3)
    assert deepspeed_setting(zero3)[0] == 3 and p.reward_model.quantization == "none"
    assert p.reward_model.backbone == "hub:meta-llama/Llama-3.1-8B-Instruct"
    for block in ("ppo", "grpo", "rloo", "sft", "dpo", "generate"):  # DDP: 8 processes, no DeepSpeed at all
        compute = stage_compute(p, block)
        assert compute.num_processes == 8 and deepspeed_setting(compute.accelerate_config) is None, block
    assert p.ppo.reward.reward_model.model == "models/reward"  # PPO reads the 8B RM for inference only


def test_the_recorded_chain_reaches_the_platform_record(params, monkeypatch):
    from detoxrl.training import common

    monkeypatch.chdir(ROOT)
    apply_profile(params, PROFILES / "gpu-8b-zero3.yaml", committed=None)
    p = load_params(params)
    record = hardware.platform_record(hardware.detect("cpu"), profiles=p.profiles)
    assert record["profiles"] == ["gpu-1b.yaml", "gpu-8b-zero3.yaml"]
    assert set(record) == {"device", "cpu_kind", "profiles"}
    trl = common.platform(p.sft.model_copy(update={"bf16": False}), "sft", p.profiles)
    assert trl["profiles"] == ["gpu-1b.yaml", "gpu-8b-zero3.yaml"] and trl["precision"] == "none"
    assert hardware.platform_record(hardware.detect("cpu"), profiles=load_params(ROOT / "params.yaml").profiles)[
        "profiles"] == []  # the default run: only the key is new


def _calls(tree, names=None):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if names is None or name in names:
                yield name, node


def test_every_stage_passes_the_chain_to_its_platform_record():
    """Each platform_record / training.common.platform call gets the chain; each cli call of a stage function that
    takes `profiles` passes params.profiles."""
    src = ROOT / "src" / "detoxrl"
    takes_profiles = set()
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text())
        takes_profiles |= {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                           and "profiles" in [a.arg for a in fn.args.args + fn.args.kwonlyargs]}
        for name, call in _calls(tree, {"platform_record", "platform"}):
            if isinstance(call.func, ast.Attribute) and ast.unparse(call.func.value) in ("hardware", "common"):
                passed = any(k.arg == "profiles" for k in call.keywords) or (name == "platform" and len(call.args) == 3)
                assert passed, f"{path.relative_to(ROOT)}:{call.lineno}: {name}(...) without the profile chain"
    stages = {"train_sft", "train_dpo", "train_reward_model", "pref_gen", "train_chat_judge", "train_ppo",
              "train_online"}
    assert stages <= takes_profiles
    calls = [(path, name, call) for path in sorted((src / "stages").glob("*.py"))
             for name, call in _calls(ast.parse(path.read_text()), stages)]
    assert {name for _, name, _ in calls} == stages  # train_dpo twice: the dpo stage and dpo_feedback's seeds
    for path, name, call in calls:
        assert any(k.arg == "profiles" and ast.unparse(k.value) == "p.profiles" for k in call.keywords), \
            f"stages/{path.name}:{call.lineno}: {name}(...) without profiles=p.profiles"


def test_every_stage_writing_a_platform_record_declares_the_profiles_param(tmp_path):
    """Each committed metrics file with a platform record comes from a stage that declares `profiles`. The files
    are read as git holds them, not from the working tree, where a `dvc repro` under way (or stopped by an error)
    has removed the outputs of the stages it reruns."""
    declared = []  # (dvc.yaml, stage, its body, the glob of one of its metrics paths)
    for dvc_yaml in (ROOT / "dvc.yaml", ROOT / "experiments" / "dvc.yaml"):
        for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
            body = stage.get("do", stage)
            for entry in body.get("metrics", []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                for var in ("${key}", "${item.seed}", "${item.model}"):
                    path = path.replace(var, "*")
                declared.append((dvc_yaml, name, body, path))
    committed = committed_files(sorted({path.split("/")[0] for *_, path in declared}), tmp_path)
    checked = 0
    for dvc_yaml, name, body, path in declared:
        for f in glob.glob(str(committed / path)) + glob.glob(str(committed / path / "*.json")):
            if not f.endswith(".json"):
                continue
            if json.loads(open(f).read()).get("platform"):
                checked += 1
                assert "profiles" in body.get("params", []), f"{dvc_yaml.name}: {name} writes {f}'s platform"
    assert checked >= 15


@pytest.mark.slow
def test_committed_baseline_comes_from_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    top = _profile(tmp_path / "p", "top.yaml", "sft:\n  lr: 3.0e-3\n")
    assert profiles.committed_text(repo / "params.yaml") == (None, "not in a git repository")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    text, why = profiles.committed_text(repo / "params.yaml")
    assert text is None and "not in git's HEAD" in why
    assert "no committed baseline" in apply_profile(repo / "params.yaml", top).note  # untracked: applied
    subprocess.run(["git", "add", "params.yaml"], cwd=repo, check=True)
    subprocess.run(["git", *GIT_ID, "commit", "-qm", "p"], cwd=repo, check=True)
    assert profiles.committed_text(repo / "params.yaml") == ((repo / "params.yaml").read_text(), "")
    assert apply_profile(repo / "params.yaml", top).note is None  # clean (committed after one apply): applied
    with pytest.raises(DetoxError, match=r"keys the profile would overwrite \(profiles\)"):  # the first one's
        apply_profile(repo / "params.yaml", top)
    assert apply_profile(repo / "params.yaml", top, force=True).recorded == ["top.yaml"] * 3  # one per apply


def test_applying_a_profile_keeps_the_lists_layout_so_commented_items_uncomment_in_place(tmp_path, params):
    """use-profile rewrites params.yaml; its lists keep params.yaml's "  - item" layout, so uncommenting an optional
    item (`# - dpo_human` under `seeded:`) gives valid YAML with that item in the list."""
    apply_profile(params, PROFILES / "smoke.yaml", committed=None)
    text = params.read_text()
    assert "\nseeded:\n  - ppo " in text and "\n  # - dpo_human " in text
    params.write_text(text.replace("\n  # - dpo_human ", "\n  - dpo_human ", 1))
    assert yaml.safe_load(params.read_text())["seeded"][-1] == "dpo_human"
