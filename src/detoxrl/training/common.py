"""What the TRL stages share: LoRA/QLoRA setup, trainer arguments, resumable checkpoints, curves, metrics.

Resuming: the trainer checkpoints every `save_steps` into `checkpoint_dir` (outside the DVC outputs). A rerun
resumes from the newest checkpoint there, provided it was written for the same params and inputs: a fingerprint
of both is stored beside the checkpoints, and a mismatch discards them (a changed lr must not resume an old run).
The checkpoints are removed once the stage has written its outputs.

A resumed run writes the bits of an uninterrupted one (`exact_resume`): the weights, optimizer, scheduler and RNG
states are in the checkpoint, but the trainers keep some numbers of their logs in memory only: the losses and TRL's
metrics accumulated since the last log, the loss sum behind `train_loss`, TRL's running token count. So every
checkpoint falls on a log (nothing is pending when it is written), `train_loss` is computed from the log history
(which the checkpoint holds), and the token count continues from the last logged one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

from .. import DetoxError, hardware
from ..params import LoraParams, TrainParams, split_batch

# Trainer log keys that are timings or bookkeeping, not curves.
_NOT_CURVES = ("epoch", "total_flos", "train_loss", "train_runtime", "train_samples_per_second",
               "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def quantization_config(params: TrainParams, stage: str):
    """A BitsAndBytesConfig for 4bit/8bit (QLoRA), or None. Fails with one sentence before anything loads."""
    if params.quantization == "none":
        return None
    import torch

    if not torch.cuda.is_available():
        raise DetoxError(f"{stage}.quantization: {params.quantization} (QLoRA via bitsandbytes) needs a CUDA GPU and "
                         f"this machine has none; set {stage}.quantization: none to train without quantization")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DetoxError(f"{stage}.quantization: {params.quantization} needs the bitsandbytes package "
                         "(pip install bitsandbytes)") from None
    from transformers import BitsAndBytesConfig

    if params.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if use_bf16(params)[0] else torch.float16)


def use_bf16(params: TrainParams, caps: hardware.Capabilities | None = None) -> tuple[bool, str]:
    """`bf16: auto | true | false` resolved for this machine (hardware.resolve_precision): (bf16?, why)."""
    requested = "auto" if params.bf16 == "auto" else "bf16" if params.bf16 else "none"
    precision, why = hardware.resolve_precision(requested, caps or hardware.detect())
    return precision == "bf16", why


def platform(params: TrainParams, stage: str, profiles: list[str] | None = None) -> dict:
    """The platform record of a TRL stage's metrics (`profiles`: params.profiles); prints the precision decision
    once."""
    caps = hardware.detect()
    bf16, why = use_bf16(params, caps)
    state = hardware.process_state()
    if state.is_main_process:
        print(f"{stage}: {'bf16' if bf16 else 'fp32'} ({why}); {state.num_processes} process(es) on {state.device}")
    record = hardware.platform_record(caps, "bf16" if bf16 else "none", why, profiles=profiles)
    return {**record, "processes": state.num_processes}


def sort_target_modules(adapter_config: Path) -> None:
    """peft writes an adapter's `target_modules` in set order, which follows Python's per-process string hashing:
    the same training wrote a different adapter_config.json (and DVC hash) run to run. Sorted, it is one file."""
    if adapter_config.exists():
        cfg = json.loads(adapter_config.read_text())
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
            adapter_config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def is_main() -> bool:
    """The process that writes a stage's outputs (the only one, unless launched with several)."""
    return hardware.process_state().is_main_process


def barrier() -> None:
    hardware.process_state().wait_for_everyone()


def per_process_batch(params: TrainParams, stage: str) -> tuple[int, int]:
    """(batch_size, grad_accum) of each process. params.yaml gives the global batch of an optimizer step
    (batch_size x grad_accum sequences or pairs); N data-parallel processes share it, so a run sees the same data
    per step whatever N: grad_accum is divided first, then batch_size."""
    world = hardware.process_state().num_processes
    b, g = params.batch_size, params.grad_accum
    split = split_batch(b, g, world)
    if split is not None:
        return split
    raise DetoxError(f"{stage}: the global batch ({stage}.batch_size {b} x grad_accum {g}) cannot be split evenly "
                     f"over {world} processes")


def load_model(path: str | Path, quant_config):
    """A causal LM from an HF dir, quantized on load if asked (then prepared for k-bit training)."""
    from transformers import AutoModelForCausalLM

    if quant_config is None:
        return AutoModelForCausalLM.from_pretrained(path)
    from peft import prepare_model_for_kbit_training

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant_config, device_map={"": 0})
    return prepare_model_for_kbit_training(model)


def lora_config(lora: LoraParams, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig; for task_type SEQ_CLS peft also trains the new scalar head in full (modules_to_save)."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      target_modules=lora.target_modules, task_type=task_type)


def trainer_args(params: TrainParams, stage: str = "train") -> dict:
    """TrainingArguments shared by SFTConfig and DPOConfig, from the params block."""
    batch_size, grad_accum = per_process_batch(params, stage)
    return dict(
        output_dir=params.checkpoint_dir, seed=params.seed, data_seed=params.seed,
        max_steps=params.max_steps or -1, num_train_epochs=params.epochs,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, learning_rate=params.lr,
        lr_scheduler_type=params.lr_scheduler, warmup_steps=params.warmup_ratio,  # < 1: a ratio of the steps
        max_length=params.max_length, bf16=use_bf16(params)[0], activation_checkpointing=params.gradient_checkpointing,
        logging_steps=params.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=params.save_steps, save_total_limit=2,
        report_to="none",  # curves go through DVCLiveCurves (below), stepped by global_step
        dataloader_num_workers=0,
        # on a CPU, say so: TrainingArguments refuses bf16 on a device it takes for a GPU (a GPU recipe's
        # `bf16: auto` on an AMX CPU, where bf16 is native); GRPO/RLOO's configs set it the same way
        use_cpu=hardware.detect().device == "cpu",
    )


def fingerprint(params, inputs: list[str | Path], extra: str = "") -> str:
    """Hash of the params block, the inputs (data files by content, model dirs by name/size/mtime) and the
    training code (src/detoxrl/training/*.py), so that a checkpoint is resumed only by the run that wrote it.
    `extra`: what else decides the run (a reasoning model's reward: its name, which holds the thinking treatment)."""
    h = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode())
    if extra:
        h.update(extra.encode())
    for code in sorted(Path(__file__).parent.glob("*.py")):
        h.update(code.read_bytes())
    for path in map(Path, inputs):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in (f for f in files if f.is_file()):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
            if f.suffix == ".jsonl":
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _resumable(ckpt: Path) -> str | None:
    """The newest whole checkpoint in ckpt (its trainer_state.json, which transformers writes last, is there) that
    was written before the last step. Not the one written after it (a run stopped before its outputs were written):
    transformers resumed there trains one step more (it looks for the end only after a step), so the run resumes
    from the checkpoint before, or starts again, and ends as the uninterrupted run did."""
    found = []
    for d in ckpt.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and (d / "trainer_state.json").is_file():
            state = json.loads((d / "trainer_state.json").read_text())
            if state["global_step"] < state["max_steps"]:
                found.append((int(m[1]), str(d)))
    return max(found)[1] if found else None


def resume_checkpoint(checkpoint_dir: str | Path, fp: str) -> str | None:
    """The newest checkpoint written for this fingerprint (`_resumable`), or None (stale checkpoints are removed)."""
    ckpt, stamp = Path(checkpoint_dir), Path(checkpoint_dir) / "fingerprint.txt"
    if is_main():  # data parallel: one process tidies, the others wait for it
        if ckpt.is_dir() and (not stamp.exists() or stamp.read_text() != fp):
            print(f"{ckpt}: discarding checkpoints written for other params or inputs")
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fp)
    barrier()
    last = _resumable(ckpt)
    if last and is_main():
        print(f"resuming from {last}")
    return last


def make_curves_callback(plots_dir: str | Path):
    """A TrainerCallback writing each trainer log to dvclive TSVs under plots_dir (stepped by global_step)."""
    from dvclive import Live
    from transformers import TrainerCallback

    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")  # never post to DVC Studio

    class DVCLiveCurves(TrainerCallback):
        """Unlike transformers' DVCLiveCallback, rows are keyed by the trainer's global_step (train and eval rows
        line up), and a resumed run first replays the history restored from its checkpoint, so the curves are
        whole. dvclive writes no dvc.yaml and saves no experiment: the pipeline declares plots_dir itself."""

        def __init__(self):
            self.live = None  # made by the main process only (data parallel: one writer)

        def _log(self, step: int, logs: dict):
            if self.live is None:
                return
            self.live.step = step
            for key, value in logs.items():
                if key not in _NOT_CURVES and key != "step" and isinstance(value, (int, float)):
                    name = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                    self.live.log_metric(name, value)

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.live = Live(str(plots_dir), save_dvc_exp=False, dvcyaml=False, report=None)
            for logs in state.log_history:  # non-empty only when resuming from a checkpoint
                self._log(logs["step"], logs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self._log(state.global_step, logs or {})

    return DVCLiveCurves()


def exact_resume(trainer) -> None:
    """Makes a run resumed from one of `trainer`'s checkpoints log what the uninterrupted run logs (see the module
    docstring): every checkpoint is written right after a log, and TRL's token count (`num_tokens`, kept in the
    trainer, not in its state) continues from the checkpoint's last log instead of from 0. Without it a resumed
    run's curves (num_tokens always; loss, entropy, DPO rewards whenever a checkpoint fell between two logs) and
    its train_loss (the mean over the steps after the resume only) differed from a straight run's."""
    from transformers import TrainerCallback

    class ExactResume(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            tokens = [e["num_tokens"] for e in state.log_history if "num_tokens" in e]
            if tokens and hasattr(trainer, "_total_train_tokens"):  # resuming (the history is the checkpoint's)
                trainer._total_train_tokens = int(tokens[-1])

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:  # runs after transformers' DefaultFlowCallback, which decides the saves
                control.should_log = True

    trainer.add_callback(ExactResume())


def train_metrics(trainer, output) -> dict:
    """Stable summary keys from a finished trainer: steps, mean and last training loss.

    train_loss is the mean loss over every step of the run, from the logged losses (each the mean over the steps
    since the log before): the trainer's own `output.training_loss` covers only the steps of its last `train()`
    call, i.e. after the resume in a resumed run. With logs every 2^k steps it is the trainer's number, to the bit."""
    history = [e for e in trainer.state.log_history if "loss" in e]
    losses = [e["loss"] for e in history]
    steps = [e["step"] - before for e, before in zip(history, [0] + [e["step"] for e in history])]
    loss = sum(x * n for x, n in zip(losses, steps)) / sum(steps) if history else output.training_loss
    if not math.isfinite(loss) or not losses or not all(map(math.isfinite, losses)):
        raise DetoxError(f"training diverged (loss {loss}); lower lr or check the data")
    return {"steps": trainer.state.global_step, "train_loss": loss, "final_loss": losses[-1]}


def parameter_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "parameters": sum(p.numel() for p in model.parameters())}
