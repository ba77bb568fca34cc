"""Per-stage compute: a data-parallel stage's `<block>.compute` overrides the global `compute` field by field, and
what cannot run under the result fails at `detoxrl check-params` (and at stage start) with one sentence."""

import ast
import json

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from detoxrl import DetoxError
from detoxrl.params import ComputeParams, stage_compute
from detoxrl.schema import COMPUTE_BLOCKS, Params, load_params
from detoxrl.stages.check_params import app as check_params_app
from detoxrl.stages.ppo import app as ppo_app

DDP, ZERO2, ZERO3 = (f"configs/accelerate/{n}.yaml" for n in ("ddp", "zero2", "zero3-offload"))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # accelerate config paths are relative to the repo root, as `accelerate launch` reads them


def _params(tmp_path, compute=None, **blocks) -> "Path":  # noqa: F821
    """The committed params.yaml with `compute` and the given blocks' keys replaced, written to tmp_path."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["compute"].update(compute or {})
    for block in ("sft", "dpo", "dpo_feedback", "reward_model"):  # global batches that 2, 4 and 8 processes split
        data[block]["grad_accum"] = 8
    for block, values in blocks.items():
        for key, value in values.items():
            if isinstance(value, dict):
                data[block][key].update(value)
            else:
                data[block][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_every_compute_block_is_in_the_committed_params_and_all_fall_back():
    p = load_params(ROOT / "params.yaml")
    for block in COMPUTE_BLOCKS:
        own = getattr(p, block).compute
        assert (own.num_processes, own.accelerate_config) == (None, None), block
        assert stage_compute(p, block) == p.compute == ComputeParams(num_processes=1, accelerate_config=None)


def test_stage_compute_round_trips_through_the_schema_and_yaml(tmp_path):
    path = _params(tmp_path, {"num_processes": 8, "accelerate_config": DDP},
                   reward_model={"compute": {"accelerate_config": ZERO3}}, ppo={"compute": {"num_processes": 4}})
    p = load_params(path)
    again = Params.model_validate(yaml.safe_load(yaml.safe_dump(p.model_dump())))
    assert again == p
    assert again.reward_model.compute.model_dump() == {"num_processes": None, "accelerate_config": ZERO3}
    assert again.ppo.compute.model_dump() == {"num_processes": 4, "accelerate_config": None}


def test_each_field_of_a_stage_compute_overrides_the_global_one_alone(tmp_path):
    p = load_params(_params(tmp_path, {"num_processes": 8, "accelerate_config": DDP},
                            reward_model={"compute": {"accelerate_config": ZERO3}},
                            ppo={"compute": {"num_processes": 2}},
                            generate={"compute": {"num_processes": 1, "accelerate_config": ZERO2}}))
    assert stage_compute(p, "reward_model") == ComputeParams(num_processes=8, accelerate_config=ZERO3)
    assert stage_compute(p, "ppo") == ComputeParams(num_processes=2, accelerate_config=DDP)
    assert stage_compute(p, "generate") == ComputeParams(num_processes=1, accelerate_config=ZERO2)
    for block in set(COMPUTE_BLOCKS) - {"reward_model", "ppo", "generate"}:
        assert stage_compute(p, block) == ComputeParams(num_processes=8, accelerate_config=DDP), block


PPO_ZERO3 = ("ppo.compute.accelerate_config: PPO cannot run under ZeRO-3 (configs/accelerate/zero3-offload.yaml): "
             "its rollout generation needs whole weights; give ppo its own compute (data-parallel, no ZeRO-3)")


@pytest.mark.parametrize("compute, blocks, sentence", [
    ({"num_processes": 8}, {"ppo": {"compute": {"accelerate_config": ZERO3}}}, PPO_ZERO3),
    ({"num_processes": 8, "accelerate_config": ZERO3},  # inherited: the sentence says where it came from
     {"grpo": {"compute": {"accelerate_config": DDP}}, "rloo": {"compute": {"accelerate_config": DDP}}},
     "ppo.compute.accelerate_config: PPO cannot run under ZeRO-3 (configs/accelerate/zero3-offload.yaml, from "
     "compute.accelerate_config): its rollout generation needs whole weights; give ppo its own compute "
     "(data-parallel, no ZeRO-3)"),
    ({"num_processes": 2, "accelerate_config": ZERO2}, {},
     "ppo.compute.accelerate_config: PPO cannot run under DeepSpeed (configs/accelerate/zero2.yaml, from "
     "compute.accelerate_config): it prepares its model without a dataloader, which accelerate's DeepSpeed path "
     "takes only with an integer train_micro_batch_size_per_gpu; give ppo its own compute (data-parallel, no "
     "DeepSpeed)"),
    ({"num_processes": 4}, {"grpo": {"compute": {"accelerate_config": ZERO3}}},
     "grpo.compute.accelerate_config: GRPO cannot run under ZeRO-3 (configs/accelerate/zero3-offload.yaml): its main "
     "process alone merges the adapter into the policy and saves it, and ZeRO-3 leaves each process a shard; give "
     "grpo its own compute (data-parallel or ZeRO-2)"),
    ({}, {"reward_model": {"quantization": "4bit", "lora": {"enabled": True},
                         "compute": {"num_processes": 8, "accelerate_config": ZERO3}}},
     "reward_model.quantization: 4bit cannot run under ZeRO-3 (configs/accelerate/zero3-offload.yaml): the stage "
     "loads bitsandbytes weights whole, which ZeRO-3 cannot shard; set reward_model.quantization: none or "
     "reward_model.compute.num_processes: 1"),
    ({}, {"sft": {"quantization": "8bit", "compute": {"num_processes": 2}}},
     "sft.quantization: 8bit cannot run in 2 processes: every process loads the quantized model onto GPU 0; set "
     "sft.quantization: none or sft.compute.num_processes: 1"),
    ({"num_processes": 2}, {"generate": {"engine": "vllm"}},
     "generate.engine: vllm cannot run in 2 processes: each would sample every prompt and write the file; set "
     "generate.compute.num_processes: 1 (vLLM batches on its GPU itself)"),
    ({"num_processes": 2}, {"evaluate": {"compute": {"accelerate_config": "configs/accelerate/nope.yaml"}}},
     "evaluate.compute.accelerate_config: configs/accelerate/nope.yaml not found"),
    ({"num_processes": 8}, {"sft": {"batch_size": 2, "grad_accum": 3}},  # found when gpu-8b-zero3 first ran
     "sft.batch_size: the global batch (sft.batch_size 2 x grad_accum 3) cannot be split evenly over 8 processes"),
])
def test_check_params_refuses_what_cannot_run_in_one_sentence(tmp_path, compute, blocks, sentence):
    path = _params(tmp_path, compute, **blocks)
    result = CliRunner().invoke(check_params_app, ["--params", str(path), "--out", str(tmp_path / "ok.json")])
    assert isinstance(result.exception, DetoxError), result.output
    assert str(result.exception) == f"{path}: {sentence}"


@pytest.mark.parametrize("compute, blocks", [
    ({"num_processes": 8, "accelerate_config": ZERO3}, {block: {"compute": {"accelerate_config": DDP}}
                                                        for block in ("ppo", "grpo", "rloo")}),
    ({"num_processes": 1, "accelerate_config": ZERO3}, {}),  # one process: nothing is launched, the config unused
    ({"num_processes": 8}, {"sft": {"quantization": "4bit", "compute": {"num_processes": 1}}}),
    ({"num_processes": 8}, {"generate": {"engine": "vllm", "compute": {"num_processes": 1}}}),
    ({"num_processes": 2, "accelerate_config": ZERO2}, {"ppo": {"compute": {"num_processes": 1}}}),
])
def test_check_params_accepts_the_stage_override_that_makes_it_run(tmp_path, compute, blocks):
    path = _params(tmp_path, compute, **blocks)
    result = CliRunner().invoke(check_params_app, ["--params", str(path), "--out", str(tmp_path / "ok.json")])
    assert result.exit_code == 0 and result.output == f"{path}: ok\n", result.output


def test_ppo_with_a_deepspeed_file_giving_the_micro_batch_passes(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2},
                                                  "train_micro_batch_size_per_gpu": 4}))
    config = tmp_path / "zero2-file.yaml"
    config.write_text(yaml.safe_dump({"distributed_type": "DEEPSPEED",
                                      "deepspeed_config": {"deepspeed_config_file": str(tmp_path / "ds.json")}}))
    load_params(_params(tmp_path, {"num_processes": 2}, ppo={"compute": {"accelerate_config": str(config)}}))
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3},
                                                  "train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(DetoxError, match=r"ppo\.compute\.accelerate_config: PPO cannot run under ZeRO-3"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_refuses_at_start_with_the_check_params_sentence(tmp_path, monkeypatch):
    path = _params(tmp_path, {"num_processes": 8}, ppo={"compute": {"accelerate_config": ZERO3}})
    monkeypatch.chdir(tmp_path)  # nothing to train here: had the check not fired, ppo would fail on missing inputs
    config = ROOT / ZERO3
    data = yaml.safe_load(path.read_text())
    data["ppo"]["compute"]["accelerate_config"] = str(config)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(ppo_app, ["--params", str(path)])
    assert str(result.exception) == f"{path}: {PPO_ZERO3.replace(ZERO3, str(config))}"
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def _relaunch_calls():
    """(stage module, its launch.relaunch(...) calls) over src/detoxrl/stages."""
    for path in sorted((ROOT / "src" / "detoxrl" / "stages").glob("*.py")):
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and ast.unparse(node.func) == "launch.relaunch"]
        if calls:
            yield path.stem, calls


# The stage commands that re-launch themselves -> the params block whose compute they run with: a stage module that
# names its block (`launch.relaunch(p, "kto")`) is read from the source; the two that take it from an option or
# argument are named here.
RELAUNCHING = {"detoxrl dpo --block dpo_feedback": "dpo_feedback", "detoxrl dpo": "dpo", "detoxrl grpo": "grpo",
               "detoxrl rloo": "rloo"}
RELAUNCHING |= {f"detoxrl {stage.replace('_', '-')}": ast.literal_eval(c.args[1])
                for stage, calls in _relaunch_calls() for c in calls if isinstance(c.args[1], ast.Constant)}


def test_the_relaunching_commands_are_the_compute_blocks():
    assert sorted(RELAUNCHING.values()) == sorted(COMPUTE_BLOCKS)
    calls = [c for _, cs in _relaunch_calls() for c in cs]
    variable = {ast.unparse(c.args[1]) for c in calls if not isinstance(c.args[1], ast.Constant)}
    assert variable == {"block", "kind"}  # dpo's --block, grpo/rloo's kind: the explicit entries above
    assert {"sft", "ppo", "generate", "evaluate", "chat_eval"} <= set(RELAUNCHING.values())
    assert all(ast.unparse(c.args[0]) == "p" for c in calls)  # the params, never the global compute alone


def test_dvc_yaml_declares_each_relaunching_stages_compute():
    """A stage that re-launches under its block's compute declares `compute` and that block (whole, or its
    `compute`), so `dvc exp run -S ppo.compute.num_processes=2` reruns the ppo stages alone."""
    checked = set()
    for dvc_yaml in (ROOT / "dvc.yaml", ROOT / "experiments" / "dvc.yaml"):
        for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
            body = stage.get("do", stage)
            cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]
            for cmd in cmds:
                block = next((b for prefix, b in RELAUNCHING.items() if cmd.startswith(prefix + " ") or cmd == prefix),
                             None)
                if block is None:
                    continue
                declared = body.get("params", [])
                assert "compute" in declared, f"{dvc_yaml.name}: {name} runs `{cmd}` without declaring compute"
                assert block in declared or f"{block}.compute" in declared, \
                    f"{dvc_yaml.name}: {name} runs `{cmd}` without declaring {block}.compute"
                checked.add(block)
    assert checked == set(COMPUTE_BLOCKS)


@pytest.mark.slow
def test_a_stage_override_reaches_the_launcher(tmp_path):
    """generate.compute.num_processes 2 under a global compute of 1: `detoxrl generate` re-launches itself in 2
    processes (2 CPU processes, gloo), which share the prompts and write them back once, in prompt order."""
    import subprocess

    from conftest import cli_env
    from tiny import build_tiny_char_model

    model = build_tiny_char_model(tmp_path / "model")
    prompts = [{"id": f"p{i}", "subset": "x", "text": t} for i, t in enumerate(["the cat", "a dog", "we", "so it"])]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    path = _params(tmp_path, {"num_processes": 1}, generate={"k": 2, "max_new_tokens": 4, "batch_size": 4,
                                                             "prompt_format": "raw", "compute": {"num_processes": 2}})
    env = dict(cli_env(), OMP_NUM_THREADS="1")
    proc = subprocess.run(["detoxrl", "generate", "tiny", "--params", str(path), "--prompts", "prompts.jsonl",
                           "--base", str(model), "--model-dir", str(model), "--out-dir", "out"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "generate: 2 processes: launch --num_processes 2" in out, out[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "tiny.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [p["id"] for p in prompts for _ in range(2)]
