"""A training stage rerun with the same params on the same CPU writes the same bits: in a fresh interpreter under
another hash seed (Python's string hashing orders sets: peft's target_modules once reached adapter_config.json that
way), and after an interruption that it resumes from its last checkpoint.

Compared: every file of the model dir (weights, adapter_config.json, tokenizer, training_args.bin: a pickle of the
trainer arguments, whose only path is `output_dir` = checkpoint_dir, relative here as in the pipeline), the curves,
and the metrics less their wall-clock keys (repro_check.WALL_CLOCK, as `detoxrl check-repro` compares them).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

import detoxrl
from detoxrl.io import write_jsonl
from detoxrl.schema import load_params
from detoxrl.training.dpo import DPOParams
from detoxrl.training.sft import SFTParams
from detoxrl.training.dpo import train_dpo
from detoxrl.training.sft import train_sft
from detoxrl_tools.repro_check import WALL_CLOCK, flatten

from conftest import ROOT, cli_env
from tiny import build_tiny_model

DEFAULTS = load_params(ROOT / "params.yaml")
TOPICS = ["my neighbour's dog barks all night", "my code review was harsh", "I lost my keys again",
          "my sister borrowed my car", "the bus was late twice", "my plants keep dying", "I can't sleep",
          "my boss ignores my emails"]


@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory):
    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Short dialogues in prepare's shapes: sft.jsonl {id, messages}, pref_{train,val}.jsonl {id, prompt, chosen,
    rejected}."""
    out = tmp_path_factory.mktemp("data")
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"What should I do, {t}?"}],
              "chosen": f"Talk it over calmly; {t} is worth one honest conversation.",
              "rejected": f"Shout at everyone until {t} stops."} for i, t in enumerate(TOPICS)]
    write_jsonl(out / "sft.jsonl", [{"id": p["id"], "messages": [*p["prompt"], {"role": "assistant",
                                                                                  "content": p["chosen"]}]}
                                    for p in pairs])
    write_jsonl(out / "pref_train.jsonl", pairs[:6])
    write_jsonl(out / "pref_val.jsonl", pairs[6:])
    return out


def sft_params(**kw) -> SFTParams:
    base = dict(max_steps=3, batch_size=1, grad_accum=2, lr=1e-2, max_length=128, logging_steps=1, save_steps=100,
                warmup_ratio=0.0, checkpoint_dir="ckpt-sft")
    return DEFAULTS.sft.model_copy(update={**base, **kw})


def dpo_params(**kw) -> DPOParams:
    base = dict(max_steps=3, batch_size=1, grad_accum=2, lr=1e-2, max_length=128, logging_steps=1, save_steps=100,
                warmup_ratio=0.0, eval_steps=2, eval_pairs=None, checkpoint_dir="ckpt-dpo")
    return DEFAULTS.dpo.model_copy(update={**base, **kw})


def digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a run wrote under run_dir (checkpoints aside); of a metrics file (*.json at the top), of
    its keys less the wall-clock ones."""
    out = {}
    for f in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.relative_to(run_dir).parts[0]
                    .startswith("ckpt")):
        rel, data = str(f.relative_to(run_dir)), f.read_bytes()
        if f.parent == run_dir and f.suffix == ".json":
            kept = {k: v for k, v in flatten(json.loads(data)).items() if not WALL_CLOCK.search(k)}
            data = json.dumps(kept, sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


# Run in a fresh interpreter, in a run dir of its own: sft at each seed, then dpo from the first sft model. Prints
# the order of a set of the target modules (what PYTHONHASHSEED changes).
WORKER = """
import json, sys
from detoxrl.training.dpo import DPOParams
from detoxrl.training.sft import SFTParams
from detoxrl.training.dpo import train_dpo
from detoxrl.training.sft import train_sft

spec = json.loads(sys.argv[1])
for seed, params in spec["sft"].items():
    train_sft(spec["tiny"], spec["data"] + "/sft.jsonl", f"sft-s{seed}", f"sft-s{seed}.json", f"plots-sft-s{seed}",
              SFTParams.model_validate_json(params))
first = next(iter(spec["sft"]))
train_dpo(f"sft-s{first}", spec["tiny"], spec["data"] + "/pref_train.jsonl", spec["data"] + "/pref_val.jsonl", "dpo",
          "dpo.json", "plots-dpo", DPOParams.model_validate_json(spec["dpo"]))
print("SET-ORDER", json.dumps(list(set(SFTParams.model_validate_json(params).lora.target_modules))))
"""


@pytest.mark.slow
def test_sft_and_dpo_write_the_same_bits_in_a_fresh_process_under_another_hash_seed(tiny_dir, data, tmp_path):
    seeds = [DEFAULTS.sft.seed, 1]  # the default training seed and another (a run of the sft_seeds experiment)
    assert seeds[0] != seeds[1]
    spec = json.dumps({"tiny": str(tiny_dir), "data": str(data), "dpo": dpo_params().model_dump_json(),
                       "sft": {s: sft_params(seed=s).model_dump_json() for s in seeds}})
    src = str(Path(detoxrl.__file__).parents[1])  # the code under test, in the child too
    runs, orders = {}, {}
    for hash_seed in ("1", "2"):
        run_dir = tmp_path / f"hash{hash_seed}"
        run_dir.mkdir()
        env = {**cli_env(zygote=False), "PYTHONHASHSEED": hash_seed, "PYTHONPATH": src}
        proc = subprocess.run([sys.executable, "-c", WORKER, spec], cwd=run_dir, env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        orders[hash_seed] = next(line for line in proc.stdout.splitlines() if line.startswith("SET-ORDER"))
        runs[hash_seed] = digests(run_dir)

    assert orders["1"] != orders["2"]  # the two interpreters do order a set of these strings differently
    a, b = runs["1"], runs["2"]
    for seed in seeds:
        assert {f"sft-s{seed}/{name}" for name in ("adapter_model.safetensors", "adapter_config.json",
                                                   "tokenizer.json", "training_args.bin")} <= set(a)
    assert {"dpo/model.safetensors", "dpo/config.json", "dpo.json", "plots-dpo/plots/metrics/train/loss.tsv"} <= set(a)
    assert sorted(a) == sorted(b)
    assert [f for f in a if a[f] != b[f]] == []
    # the training seed decides the run: the two seeds' adapters differ
    assert a[f"sft-s{seeds[0]}/adapter_model.safetensors"] != a[f"sft-s{seeds[1]}/adapter_model.safetensors"]


class Interrupt(TrainerCallback):
    """Stops the run right after its checkpoint at `step` is written, as a killed process would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


# 5 steps, a log every 3 and a checkpoint every 2, so a checkpoint falls between two logs: the trainer holds the
# losses and TRL metrics since the last log in memory only, and TRL counts num_tokens in memory (a resumed run counted
# from 0, and its train_loss was the mean over the steps after the resume). sft is stopped twice: after the checkpoint
# of step 2, then after the one of the last step (before the outputs were written), from which it must not resume:
# transformers resumed after the last step trains one step more; it resumes from the checkpoint before.
@pytest.mark.slow  # seven short trainings (sft 4, dpo 3; 20-30 s a case on 2 cores): too long for the fast tier
@pytest.mark.parametrize(("stage", "stops", "resumes_at"), [("sft", [2, 5], [2, 4]), ("dpo", [2], [2])],
                         ids=["sft", "dpo"])
def test_a_run_resumed_from_its_checkpoints_writes_the_bits_of_an_uninterrupted_run(stage, stops, resumes_at, tiny_dir,
                                                                                   data, tmp_path, monkeypatch, capsys):
    knobs = dict(max_steps=5, logging_steps=3, save_steps=2)

    def run(name: str, *callbacks):
        monkeypatch.chdir(tmp_path / name)
        if stage == "sft":
            return train_sft(tiny_dir, data / "sft.jsonl", "model", "metrics.json", "plots", sft_params(**knobs),
                             callbacks=callbacks)
        return train_dpo(tiny_dir, tiny_dir, data / "pref_train.jsonl", data / "pref_val.jsonl", "model",
                         "metrics.json", "plots", dpo_params(**knobs), callbacks=callbacks)

    for name in ("straight", "resumed"):
        (tmp_path / name).mkdir()
    run("straight")
    for i, stop in enumerate([*stops, None]):
        capsys.readouterr()
        if stop is None:
            run("resumed")
        else:
            with pytest.raises(KeyboardInterrupt):
                run("resumed", Interrupt(stop))
            assert (tmp_path / "resumed" / f"ckpt-{stage}" / f"checkpoint-{stop}").is_dir()
            assert not (tmp_path / "resumed" / "model").exists()
        if i:
            assert f"resuming from ckpt-{stage}/checkpoint-{resumes_at[i - 1]}\n" in capsys.readouterr().out

    a, b = digests(tmp_path / "straight"), digests(tmp_path / "resumed")
    assert {"model/tokenizer.json", "metrics.json", "plots/plots/metrics/train/num_tokens.tsv"} <= set(a)
    assert sorted(a) == sorted(b)
    assert [f for f in a if a[f] != b[f]] == []
