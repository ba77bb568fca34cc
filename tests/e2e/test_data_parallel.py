"""Data-parallel PPO in real `accelerate launch` processes on the CPU (gloo), and the device-placement guard.

- one PPO update with 2 processes x B/2 rows equals 1 process x B rows (whitening, loss normalisation and the
  gradient average all over the global batch), and leaves both processes with identical weights;
- train_ppo under 2 processes: the processes draw disjoint prompts, the global batch is the single-process one,
  and the outputs are written once;
- every tensor factory of a PPO step and of generation names its device (tests/support/device_guard.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from tiny import build_tiny_char_model

WORKER = Path(__file__).resolve().parents[1] / "support" / "dp_worker.py"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_char_model(tmp_path_factory.mktemp("dp") / "model")


def launch(n: int, *args, tmp: Path, check: bool = True) -> str:
    from detoxrl.launch import free_port

    env = cli_env()
    env.update(OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(WORKER.parent), *filter(None, [env.get("PYTHONPATH")])]))
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *(["--multi_gpu"] if n > 1 else []),
           "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(WORKER), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert (proc.returncode == 0) == check, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_processes_make_the_single_process_update_and_agree(tiny_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, 1), (two, 2)):
        out.mkdir()
        launch(n, "update", tiny_dir, out, tmp=tmp_path)
    # after the step both processes hold the same weights, bit for bit (DDP averaged their gradients)
    assert (two / "rank0.sha256").read_text() == (two / "rank1.sha256").read_text()
    a, b = torch.load(one / "state.pt"), torch.load(two / "state.pt")
    assert a.keys() == b.keys() and len(a) > 4
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5, msg=f"{key} differs")


@pytest.mark.slow
def test_train_ppo_under_two_processes(tiny_dir, tmp_path):
    words = ["The", "A man", "She said", "Why", "Our city", "When the", "It is", "They"]
    texts = [f"{w} {i}" for i, w in enumerate(words * 3)]  # distinct texts, so disjoint prompts show as such
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "subset": "x", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = launch(2, "train", tiny_dir, tmp_path, tmp=tmp_path)
    assert out.count("ppo: precision") == 1 and "2 process(es)" in out  # the main process speaks
    seen = [[json.loads(line) for line in (tmp_path / f"prompts.rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2  # two steps
    for step in range(2):
        assert len(seen[0][step]) == len(seen[1][step]) == 4  # batch_size 8 = 2 processes x 4
        assert not set(seen[0][step]) & set(seen[1][step])  # disjoint prompts
    # the global batch of each step is the one a single process draws (the same seeded prompt order)
    import random

    rng = random.Random(0)
    for step in range(2):
        assert seen[0][step] + seen[1][step] == [texts[i] for i in rng.sample(range(len(texts)), 8)]
    # written once, by the main process: one model, one metrics file, one row per step in each curve
    finals = [json.loads((tmp_path / f"final.rank{r}.json").read_text()) for r in (0, 1)]
    for final in finals:
        final.pop("time_step_s"), final.pop("train_seconds")  # each process's own wall clock
    assert finals[0] == finals[1] and finals[0]["processes"] == 2  # both hold the global statistics
    assert {k: v for k, v in json.loads((tmp_path / "ppo.json").read_text()).items()
            if k not in ("time_step_s", "train_seconds")} == finals[0]
    assert (tmp_path / "model" / "model.safetensors").exists()
    rows = (tmp_path / "plots" / "plots" / "metrics" / "reward" / "score_mean.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_where_it_stopped(tiny_dir, tmp_path):
    """Two processes stop in step 2 of 3 (after the checkpoint of step 2); relaunched, they continue from it, score
    only the missing step, and end exactly where an uninterrupted 2-process run ends."""
    texts = [f"{w} {i}" for i, w in enumerate(["The", "A man", "She said", "Why", "Our city", "It is"] * 3)]
    runs = {}
    for name, stops in (("straight", [None]), ("resumed", ["3", None])):
        d = tmp_path / name
        d.mkdir()
        (d / "prompts.jsonl").write_text("".join(
            json.dumps({"id": f"p{i}", "subset": "x", "text": t}) + "\n" for i, t in enumerate(texts)))
        for stop in stops:
            if stop:
                launch(2, "resume", tiny_dir, d, stop, tmp=d, check=False)
                assert not (d / "model").exists() and (d / "ckpt" / "state.pt").exists()
                assert torch.load(d / "ckpt" / "state.pt", weights_only=False)["processes"] == 2
                for r in (0, 1):  # the scored prompts so far; the relaunch must add exactly one step
                    (d / f"prompts.rank{r}.jsonl").unlink()
                continue
            out = launch(2, "resume", tiny_dir, d, tmp=d)
        runs[name] = d, out
    d, out = runs["resumed"]
    assert out.count("ppo: resuming from step 2") == 1, out
    for r in (0, 1):
        assert len((d / f"prompts.rank{r}.jsonl").read_text().splitlines()) == 1  # step 2 only, on each process
    straight_last = [json.loads(runs["straight"][0].joinpath(f"prompts.rank{r}.jsonl").read_text().splitlines()[-1])
                     for r in (0, 1)]
    assert [json.loads(d.joinpath(f"prompts.rank{r}.jsonl").read_text()) for r in (0, 1)] == straight_last
    finals = [json.loads((x / "ppo.json").read_text()) for x in (runs["straight"][0], d)]
    for final in finals:
        final.pop("time_step_s"), final.pop("train_seconds")  # wall clock
    assert finals[0] == finals[1]  # the same global statistics after the last step
    from safetensors.torch import load_file

    a, b = (load_file(x / "model" / "model.safetensors") for x in (runs["straight"][0], d))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=f"{key} differs")
    rows = (d / "plots" / "plots" / "metrics" / "reward" / "score_mean.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in rows[1:]] == [0, 1, 2]  # the curves replayed whole, written once


def test_every_tensor_of_a_ppo_step_and_of_generation_names_its_device(tiny_dir, tmp_path):
    """On a CPU-only machine an implicit device is the right one, so only a guard sees the defect that kept PPO
    off GPUs: inside it, a factory call from src/detoxrl without device= fails."""
    from accelerate.state import AcceleratorState
    from device_guard import ExplicitDevice
    from ppo_helpers import LetterReward, ppo_params

    from detoxrl.evaluation.generate import sample_continuations
    from detoxrl.models.load import load_for_inference
    from detoxrl.params import GenerateParams
    from detoxrl.training import ppo as P

    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "subset": "x", "text": w}) + "\n"
        for i, w in enumerate(["The", "Why", "It is"] * 6)))
    # the guard catches an implicit device in the code it watches (here: this file), and lets an explicit one pass
    with pytest.raises(AssertionError, match=r"torch.zeros without an explicit device at .*test_data_parallel"):
        with ExplicitDevice(watch=(__file__,)):
            torch.zeros(3, device="cpu")
            torch.zeros(3)
    with pytest.raises(AssertionError, match="torch.Generator without an explicit device"):
        with ExplicitDevice(watch=(__file__,)):
            torch.Generator()
    guard = ExplicitDevice()
    AcceleratorState._reset_state(True)
    with guard:
        P.train_ppo(tiny_dir, tiny_dir, tmp_path / "prompts.jsonl", tmp_path / "out", tmp_path / "ppo.json",
                    tmp_path / "plots", tmp_path / "ckpt", ppo_params(steps=1, batch_size=8, minibatch_size=4,
                                                                     epochs=1, whiten_advantages=True),
                    LetterReward(), lambda text, tok: text, progress=False)
        model, tok = load_for_inference(tiny_dir, tiny_dir)
        params = GenerateParams(engine="hf", prompt_format="raw", chat_instruction="", k=2, max_new_tokens=5,
                                temperature=1.0, top_p=0.9, seed=0, batch_size=4,
                                compute=dict(num_processes=None, accelerate_config=None))
        samples = sample_continuations(model, tok, ["The", "Why"], params, progress=False)
    AcceleratorState._reset_state(True)
    assert len(samples) == 2 and all(len(s) == 2 for s in samples)
    assert guard.checked > 20  # the project's factory calls were seen, and each named its device


def test_accelerate_configs_load_and_say_what_they_are():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from conftest import ROOT

    configs = {p.stem: load_config_from_file(str(p)) for p in (ROOT / "configs" / "accelerate").glob("*.yaml")}
    assert set(configs) == {"ddp", "zero2", "zero3-offload"}
    assert configs["ddp"].distributed_type == DistributedType.MULTI_GPU and configs["ddp"].mixed_precision == "no"
    z2, z3 = configs["zero2"].deepspeed_config, configs["zero3-offload"].deepspeed_config
    assert configs["zero2"].distributed_type == configs["zero3-offload"].distributed_type == DistributedType.DEEPSPEED
    assert z2["zero_stage"] == 2 and z2["offload_optimizer_device"] == "none"
    assert z3["zero_stage"] == 3 and z3["offload_param_device"] == z3["offload_optimizer_device"] == "cpu"
    assert z3["zero3_save_16bit_model"] and z3["zero3_init_flag"]


def test_batches_split_over_processes_keep_the_global_batch(monkeypatch):
    from conftest import ROOT

    from detoxrl import DetoxError, hardware
    from detoxrl.schema import load_params
    from detoxrl.training.common import per_process_batch

    sft = load_params(ROOT / "params.yaml").sft

    class State:
        num_processes = 2

    monkeypatch.setattr(hardware, "process_state", lambda: State)
    assert per_process_batch(sft.model_copy(update={"batch_size": 1, "grad_accum": 4}), "sft") == (1, 2)
    assert per_process_batch(sft.model_copy(update={"batch_size": 4, "grad_accum": 1}), "sft") == (2, 1)
    assert per_process_batch(sft.model_copy(update={"batch_size": 2, "grad_accum": 3}), "sft") == (1, 3)
    with pytest.raises(DetoxError, match=r"sft: the global batch \(sft.batch_size 1 x grad_accum 1\) cannot be split"):
        per_process_batch(sft.model_copy(update={"batch_size": 1, "grad_accum": 1}), "sft")
