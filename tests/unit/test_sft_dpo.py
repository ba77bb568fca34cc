"""SFT and DPO stages on the tiny model: loss masking, adapter round trip, QLoRA guard, resume, short runs."""

import json
import math
import subprocess

import pytest
import torch
import yaml
from conftest import ROOT, cli_env
from tiny import build_tiny_model
from transformers import AutoTokenizer, TrainerCallback

from detoxrl import DetoxError
from detoxrl.data import hh_rlhf
from detoxrl.data.prepare import HH_FILE
from detoxrl.evaluation.preference import preference_accuracy
from detoxrl.io import read_jsonl, write_jsonl
from detoxrl.models.load import load_for_inference
from detoxrl.schema import load_params
from detoxrl.training.dpo import train_dpo
from detoxrl.training.sft import build_trainer, train_sft

DEFAULTS = load_params(ROOT / "params.yaml")


def sft_params(tmp_path, **kw):
    base = dict(max_steps=2, batch_size=2, grad_accum=1, lr=1e-2, max_length=256, logging_steps=1, save_steps=100,
                warmup_ratio=0.0, checkpoint_dir=str(tmp_path / "ckpt-sft"))
    return DEFAULTS.sft.model_copy(update={**base, **kw})


def dpo_params(tmp_path, **kw):
    base = dict(max_steps=2, batch_size=2, grad_accum=1, lr=1e-2, max_length=256, logging_steps=1, save_steps=100,
                warmup_ratio=0.0, eval_steps=100, eval_pairs=None, checkpoint_dir=str(tmp_path / "ckpt-dpo"))
    return DEFAULTS.dpo.model_copy(update={**base, **kw})


@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory):
    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def data(raw_dir, tmp_path_factory):
    """Short real HH-RLHF pairs, in prepare's record shapes (built from data/raw with prepare's parser)."""
    pairs = []
    for i, record in enumerate(read_jsonl(raw_dir / HH_FILE)):
        pair = hh_rlhf.to_pair(record)
        if isinstance(pair, str) or len(json.dumps(pair.prompt)) + len(pair.chosen) + len(pair.rejected) > 700:
            continue
        pairs.append({"id": f"hh-{i:05d}", "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
        if len(pairs) == 20:
            break
    out = tmp_path_factory.mktemp("data")
    write_jsonl(out / "pref_train.jsonl", pairs[:12])
    write_jsonl(out / "pref_val.jsonl", pairs[12:16])
    write_jsonl(out / "pref_test.jsonl", pairs[16:])
    write_jsonl(out / "sft.jsonl", [{"id": p["id"], "messages": p["prompt"] + [{"role": "assistant",
                                                                                  "content": p["chosen"]}]}
                                    for p in pairs[:12]])
    return out


def test_sft_loss_covers_only_the_final_assistant_turn(tiny_dir, raw_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    # A real multi-turn record: an earlier assistant turn that must NOT be trained on.
    for index, raw in enumerate(read_jsonl(raw_dir / HH_FILE)):  # noqa: B007  (index is used after the loop)
        pair = hh_rlhf.to_pair(raw)
        if not isinstance(pair, str) and len(pair.prompt) >= 3 and len(json.dumps(pair.prompt)) < 800:
            break
    record = {"id": f"hh-{index:05d}", "messages": pair.prompt + [{"role": "assistant", "content": pair.chosen}]}
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_dir), tok, [record],
                            sft_params(tmp_path, max_length=512))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert tok.decode(ids) == tok.apply_chat_template(record["messages"], tokenize=False)
    trained = ids[labels != -100]
    assert tok.decode(trained) == pair.chosen + "<|im_end|>\n"  # the response and its end-of-turn, nothing else
    n_prompt = len(tok.apply_chat_template(pair.prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert (labels != -100).nonzero().min() == n_prompt
    assert pair.prompt[1]["role"] == "assistant" and pair.prompt[1]["content"] not in tok.decode(trained)


def _greedy(model, tok, prompt="How do I make my neighbour's dog stop barking?"):
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_lora_adapter_and_merged_model_reload_to_the_same_generations(tiny_dir, data, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    params = sft_params(tmp_path)
    trainer = build_trainer(AutoModelForCausalLM.from_pretrained(tiny_dir), tok, read_jsonl(data / "sft.jsonl"),
                            params)
    trainer.train()
    trainer.model.eval()
    in_memory = _greedy(trainer.model, tok)
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded, rtok = load_for_inference(tmp_path / "adapter", tiny_dir)
    assert _greedy(reloaded, rtok) == in_memory
    base, _ = load_for_inference(tiny_dir)
    assert _greedy(base, tok) != in_memory  # the adapter changed the model: the comparison means something

    # The stage itself: adapter output vs `merge: true` (a full model dir), same seed -> same model.
    train_sft(tiny_dir, data / "sft.jsonl", tmp_path / "sft", tmp_path / "m1.json", tmp_path / "p1", params)
    train_sft(tiny_dir, data / "sft.jsonl", tmp_path / "merged", tmp_path / "m2.json", tmp_path / "p2",
              params.model_copy(update={"merge": True}))
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "config.json").exists() and not (tmp_path / "merged" / "adapter_config.json").exists()
    gens = [_greedy(*load_for_inference(tmp_path / name, tiny_dir)) for name in ("sft", "merged")]
    assert gens[0] == gens[1] == in_memory
    assert json.loads((tmp_path / "m2.json").read_text())["merged"] is True


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_qlora_without_cuda_stops_before_training_with_one_sentence(stage, tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data[stage]["quantization"] = "4bit"
    data[stage]["checkpoint_dir"] = str(tmp_path / "ckpt")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    # No models or data here at all: the refusal must come before anything is read or trained.
    proc = subprocess.run(["detoxrl", stage, "--params", "params.yaml"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {stage}.quantization: 4bit (QLoRA via bitsandbytes) needs a CUDA GPU and "
                                   f"this machine has none; set {stage}.quantization: none to train without "
                                   "quantization")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "models").exists()


def test_quantization_needs_lora(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["sft"].update(quantization="4bit")
    data["sft"]["lora"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=r"sft: quantization '4bit' needs lora\.enabled: true"):
        load_params(tmp_path / "params.yaml")


class Interrupt(TrainerCallback):
    """Stops the run right after the checkpoint at `step` is written, as a killed process would."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class StartStep(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.global_step = state.global_step


def test_interrupted_sft_resumes_from_its_last_checkpoint(tiny_dir, data, tmp_path):
    params = sft_params(tmp_path, max_steps=4, save_steps=2, batch_size=1)
    out, metrics, plots = tmp_path / "sft", tmp_path / "sft.json", tmp_path / "plots"
    run = lambda p, *cb: train_sft(tiny_dir, data / "sft.jsonl", out, metrics, plots, p, callbacks=cb)  # noqa: E731

    with pytest.raises(KeyboardInterrupt):
        run(params, Interrupt(2))
    assert not out.exists()  # nothing half-written
    assert (tmp_path / "ckpt-sft" / "checkpoint-2").is_dir()

    start = StartStep()
    resumed = run(params, start)
    assert start.global_step == 2  # continued at step 2, not from 0
    assert resumed["steps"] == 4 and (out / "adapter_config.json").exists()
    assert not (tmp_path / "ckpt-sft").exists()  # checkpoints removed on success
    loss_rows = (plots / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in loss_rows[1:]] == ["1", "2", "3", "4"]  # whole curve, no duplicates

    # The same run uninterrupted ends at the same loss.
    fresh = train_sft(tiny_dir, data / "sft.jsonl", tmp_path / "fresh", tmp_path / "fresh.json", tmp_path / "pf",
                      params.model_copy(update={"checkpoint_dir": str(tmp_path / "ckpt-fresh")}))
    assert fresh["final_loss"] == pytest.approx(resumed["final_loss"], rel=1e-5)

    # A checkpoint written for other params is not resumed.
    with pytest.raises(KeyboardInterrupt):
        run(params, Interrupt(2))
    start = StartStep()
    run(params.model_copy(update={"lr": 5e-3}), start)
    assert start.global_step == 0


@pytest.fixture(scope="module")
def sft_dir(tiny_dir, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    metrics = train_sft(tiny_dir, data / "sft.jsonl", tmp / "sft", tmp / "sft.json", tmp / "plots",
                        sft_params(tmp, max_steps=3))
    assert set(metrics) >= {"steps", "train_loss", "final_loss", "trainable_parameters", "parameters"}
    assert metrics["steps"] == 3 and math.isfinite(metrics["train_loss"])
    assert json.loads((tmp / "sft.json").read_text()) == metrics
    for curve in ("loss", "learning_rate", "grad_norm"):
        assert (tmp / "plots" / "plots" / "metrics" / "train" / f"{curve}.tsv").exists()
    assert not (tmp / "plots" / "dvc.yaml").exists()
    return tmp / "sft"


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_runs_from_the_sft_model_against_it_as_reference(tiny_dir, sft_dir, data, tmp_path, loss_type):
    params = dpo_params(tmp_path, loss_type=loss_type)
    metrics = train_dpo(sft_dir, tiny_dir, data / "pref_train.jsonl", data / "pref_val.jsonl", tmp_path / "dpo",
                        tmp_path / "dpo.json", tmp_path / "plots", params)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"]) and metrics["loss_type"] == loss_type
    v = metrics["validation"]
    assert set(v) >= {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert json.loads((tmp_path / "dpo.json").read_text()) == metrics
    for curve in ("train/loss", "train/learning_rate", "train/grad_norm", "train/rewards/margins",
                  "eval/rewards/chosen", "eval/rewards/rejected", "eval/rewards/margins", "eval/rewards/accuracies"):
        assert (tmp_path / "plots" / "plots" / "metrics" / f"{curve}.tsv").exists(), curve
    # models/dpo is a self-contained full model dir
    assert (tmp_path / "dpo" / "config.json").exists() and not (tmp_path / "dpo" / "adapter_config.json").exists()
    load_for_inference(tmp_path / "dpo", tmp_path / "no-base-needed")
    assert not (tmp_path / "ckpt-dpo").exists()

    if loss_type == "sigmoid":
        # pref_eval's implicit reward beta * (log pi_dpo - log pi_sft) on the validation pairs reproduces the
        # margin TRL measured with the adapter disabled: the reference really is the SFT model.
        p = DEFAULTS.model_copy(update={
            "models": {"base": str(tiny_dir), "sft": str(sft_dir), "dpo": str(tmp_path / "dpo")},
            "pref_eval": DEFAULTS.pref_eval.model_copy(update={"max_pairs": None, "batch_size": 2}),
            "dpo": params})
        r = preference_accuracy(data / "pref_val.jsonl", tiny_dir, tmp_path / "pref.json", p)
        assert r["pairs"] == 4 and set(r["loglik_accuracy"]) == {"base", "sft", "dpo"}
        assert r["dpo_reward_accuracy"]["mean_margin"] == pytest.approx(v["rewards/margins"], rel=1e-3, abs=1e-5)
        assert r["dpo_reward_accuracy"]["value"] == pytest.approx(v["rewards/accuracies"])
        # With the SFT model as "dpo", every implicit reward is 0: ties count half.
        p = p.model_copy(update={"models": {**p.models, "dpo": str(sft_dir)}})
        assert preference_accuracy(data / "pref_val.jsonl", tiny_dir, tmp_path / "p2.json", p)[
            "dpo_reward_accuracy"]["value"] == 0.5
