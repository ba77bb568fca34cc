"""The `dpo` stage: Direct Preference Optimization (TRL DPOTrainer) from the SFT model, on pref_train.

Reference model. DPO's implicit reward is r = beta * (log pi(y|x) - log pi_ref(y|x)) with pi_ref = the SFT model.
We load the SFT weights (models/sft merged into models/base by load_for_inference), add a fresh LoRA adapter and
let DPOTrainer compute the reference log-probs with that adapter disabled: the reference is then exactly the SFT
model, with no second copy of the weights in memory. The alternative, `precompute_ref_log_probs`, runs the
reference once over the whole training set before training: at about 0.4 s per no-grad forward of one sequence on
2 CPU cores (measured), precomputing pref_train (1,469 pairs = 2,938 sequences) takes about 20 min, while the default
run sees only 20 * 2 = 40 pairs and pays about 30 s for their reference passes on the fly. On the fly is cheaper
until a run covers most of an epoch. Full fine-tuning (`dpo.lora.enabled: false`) keeps a frozen copy as reference.

QLoRA (`dpo.quantization: 4bit|8bit`, CUDA only) loads the SFT weights quantized (an adapter SFT model is merged in
full precision first) and trains the adapter over them.

models/dpo is a full model dir (the DPO adapter merged into the full-precision SFT weights: config.json,
model.safetensors, tokenizer), so generate/evaluate load it like any model and it depends on nothing else.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..io import atomic_dir, read_jsonl, write_json
from ..params import Block, PositiveInt, Strict, TrainParams
from . import common, lm_head


class DPOParams(TrainParams):
    beta: Annotated[float, Field(gt=0)]
    """strength of the pull towards the reference (SFT) model: higher = stay closer to it"""
    loss_type: Literal["sigmoid", "ipo", "hinge"]
    """sigmoid = DPO (Rafailov et al.) | ipo = IPO (Azar et al.) | hinge = TRL's hinge loss"""
    eval_steps: PositiveInt
    """evaluate on the validation pairs every this many steps; curves: rewards/accuracies, margins"""
    eval_pairs: PositiveInt | None
    """validation pairs used (the first n of pref_val); null = all"""


class FeedbackRunParams(Strict):  # one dpo_feedback@<key> stage: DPO from `init` on a source of on-policy labels
    init: str
    """the model DPO starts from (models/sft, or models/dpo_rlaif for AI-then-human)"""
    train: str
    """DPO pairs (label_ai's or human_pairs' output)"""
    val: str
    """DPO validation pairs"""
    labels_card: str
    """the card of the labelled pairs (metrics/cards/<this>.json, written by the stage that labelled them): its
    graders join the DPO models' training signal and its cost their budget"""


# The params blocks this method reads: schema.py adds them to params.yaml's schema under these names.
BLOCKS = {
    "dpo": Block(DPOParams, "DPO (TRL DPOTrainer) from the SFT model on pref_train"),
    "dpo_feedback": Block(DPOParams, "DPO on on-policy feedback pairs (dpo_feedback@<key>): the dpo stage's code and "
                                     "knobs; short texts: cheap steps"),
    "feedback_runs": Block(dict[str, FeedbackRunParams], "dpo_feedback's foreach: key -> init model and pairs; "
                           "models/dpo_<key>; human runs are added once labels exist"),
}


def to_preference(record: dict) -> dict:
    """{id, prompt: [messages], chosen: str, rejected: str} -> TRL's conversational preference format; a prompt
    that is plain text (the on-policy pairs of pref_gen/label_ai, raw continuations of RTP prompts) stays in
    TRL's standard format: the prompt and each response concatenated as text, as the models are evaluated."""
    if isinstance(record["prompt"], str):
        return {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
    return {"prompt": record["prompt"],
            "chosen": [{"role": "assistant", "content": record["chosen"]}],
            "rejected": [{"role": "assistant", "content": record["rejected"]}]}


def sft_model(sft_dir: Path, base_dir: Path, quant, scratch: Path):
    """The SFT weights as a plain (adapter-free) model, quantized on load if asked; and the tokenizer."""
    from ..models.load import load_for_inference

    # a LoRA SFT adapter comes merged into the base; the trainer moves the model to the device
    model, tokenizer = load_for_inference(sft_dir, base_dir, device="cpu")
    if quant is not None:  # quantize the SFT weights, not the base's
        if common.is_main():
            model.save_pretrained(scratch / "sft-merged")
        common.barrier()
        model = common.load_model(scratch / "sft-merged", quant)
    return model, tokenizer


def train_dpo(sft_dir: str | Path, base_dir: str | Path, train_path: str | Path, val_path: str | Path,
              out_dir: str | Path, metrics_path: str | Path, plots_dir: str | Path, params: DPOParams,
              callbacks=(), profiles: list[str] | None = None) -> dict:
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from ..models.load import load_for_inference

    sft_dir, base_dir = Path(sft_dir), Path(base_dir)
    quant = common.quantization_config(params, "dpo")  # fails here, before anything loads, without CUDA
    records = read_jsonl(train_path)
    train = [to_preference(r) for r in records]
    # on-policy pairs name the judge that ordered them (label_ai): DPO's "reward" then contains that judge
    judges_in_reward = sorted({r["grader"] for r in records if r.get("grader")} - {"reward_model"})
    val = [to_preference(r) for r in read_jsonl(val_path)][: params.eval_pairs]
    fp = common.fingerprint(params, [sft_dir, base_dir, train_path, val_path])
    platform = common.platform(params, "dpo", profiles)  # prints the precision it runs at, and why
    resume = common.resume_checkpoint(params.checkpoint_dir, fp)
    model, tokenizer = sft_model(sft_dir, base_dir, quant, Path(params.checkpoint_dir))

    lm_head.install()  # CPU: LM head on response positions only, logits not recomputed in backward
    args = DPOConfig(**common.trainer_args(params, "dpo"), beta=params.beta, loss_type=[params.loss_type],
                     eval_strategy="steps", eval_steps=params.eval_steps, precompute_ref_log_probs=False)
    trainer = DPOTrainer(
        model=model, ref_model=None if params.lora.enabled else copy.deepcopy(model), args=args,
        train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val), processing_class=tokenizer,
        peft_config=common.lora_config(params.lora),
        callbacks=[common.make_curves_callback(plots_dir), *callbacks],
    )
    common.exact_resume(trainer)
    output = trainer.train(resume_from_checkpoint=resume)
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if not evals or evals[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()  # the final validation point, unless the last step already had one
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    validation = {k[5:]: v for k, v in evals[-1].items()
                  if k == "eval_loss" or k.startswith(("eval_rewards/", "eval_logps/"))}
    metrics = {**common.train_metrics(trainer, output), **common.parameter_counts(trainer.model), "platform": platform,
               "pairs": len(trainer.train_dataset), "validation_pairs": len(val), "loss_type": params.loss_type,
               "pairs_seen": trainer.state.global_step * params.batch_size * params.grad_accum,
               "judges_in_reward": judges_in_reward,
               "train_seconds": round(float(output.metrics.get("train_runtime", 0.0)), 1),
               "beta": params.beta, "validation": validation}

    final = Path(params.checkpoint_dir) / "final"
    trainer.save_model(str(final))  # the DPO adapter (LoRA) or the whole model; every process takes part (ZeRO-3)
    if not common.is_main():  # data parallel: the main process alone writes the stage's outputs
        common.barrier()
        return metrics
    with atomic_dir(out_dir) as tmp:
        if params.lora.enabled:
            # Merged into full-precision SFT weights (not the quantized ones a QLoRA run trained over).
            sft, _ = load_for_inference(sft_dir, base_dir, device="cpu")
            PeftModel.from_pretrained(sft, final).merge_and_unload().save_pretrained(tmp)
        else:
            trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(metrics_path, metrics)
    shutil.rmtree(params.checkpoint_dir, ignore_errors=True)
    common.barrier()
    return metrics
