import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT, cli_env

from detoxrl import DetoxError
from detoxrl.schema import load_params
from detoxrl_tools.profiles import apply_profile, resolve_chain


def _write(tmp_path, mutate):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_params_and_profiles_are_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the accelerate configs a profile names are read from the repo root
    params = load_params(ROOT / "params.yaml")
    assert params.base_model.source == "packaged:smollm2-135m-instruct"
    assert params.profiles == []
    for profile in sorted((ROOT / "profiles").glob("*.yaml")):  # each chain (`extends:` resolved), base first
        target = tmp_path / f"{profile.stem}.yaml"
        shutil.copy(ROOT / "params.yaml", target)
        apply_profile(target, profile, committed=None)
        assert load_params(target).profiles == [p.path.name for p in resolve_chain(profile)]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["prepare"].update(seeed=3), r"prepare\.seeed: unknown key"),
        (lambda d: d["prepare"].update(seed="abc"), r"prepare\.seed: .*integer.*'abc'"),
        (lambda d: d["prepare"]["rtp"].update(eval_nontoxic=-1),
         r"prepare\.rtp\.eval_nontoxic: .*greater than or equal to 0"),
        (lambda d: d["prepare"]["hh"]["split"].update(train=0.5), r"prepare\.hh\.split: .*sum to 1"),
        (lambda d: d["prepare"].pop("seed"), r"prepare\.seed: missing key"),
        (lambda d: d["base_model"].update(source="weird"), r"base_model: .*'packaged:<name>'"),
        (lambda d: d["base_model"].update(dtype="int3"), r"base_model\.dtype: "),
        (lambda d: d["evaluate"].update(tail_fractions=[0.1, 1.5]),
         r"evaluate\.tail_fractions\.1: .*less than or equal to 1"),
        (lambda d: d["evaluate"].update(tail_fractions=[]), r"evaluate\.tail_fractions: .*at least 1"),
        (lambda d: d["ppo_cvar"].update(alpha=0), r"ppo_cvar\.alpha: .*greater than 0"),
        (lambda d: d["models"].update(ppo_cvar="models/ppo_cvar"),
         r"report\.experiments \['ppo_cvar'\] are also in models"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(DetoxError, match=message) as exc:
        load_params(path)
    assert "\n" not in str(exc.value)
    assert str(path) in str(exc.value)


@pytest.mark.slow
def test_cli_reports_bad_key_in_one_line(tmp_path):
    path = _write(tmp_path, lambda d: d["prepare"].update(seeed=3))
    proc = subprocess.run(["detoxrl", "prepare", "--params", str(path)], capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {path}: prepare.seeed: unknown key"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_profile_merge_keeps_comments_and_validates(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    apply_profile(target, ROOT / "profiles" / "smoke.yaml", committed=None)
    text = target.read_text()
    assert "# held-out eval prompts drawn from the challenging subset" in text  # the comments (from the schema) kept
    merged = load_params(target)
    smoke = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    assert merged.prepare.hh.max_pairs == smoke["prepare"]["hh"]["max_pairs"]
    assert merged.prepare.seed == load_params(ROOT / "params.yaml").prepare.seed  # untouched keys kept

    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  rtp:\n    eval_nontoxic: -5\n")
    before = target.read_text()
    with pytest.raises(DetoxError, match=r"prepare\.rtp\.eval_nontoxic"):
        apply_profile(target, bad, committed=None)
    assert target.read_text() == before  # nothing half-written
    bad.write_text("prepare:\n  nope: 1\n")
    with pytest.raises(DetoxError, match=r"prepare\.nope: unknown key"):
        apply_profile(target, bad, committed=None)
