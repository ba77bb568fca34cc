"""The `reward_model` stage: a pairwise (Bradley-Terry) reward model on pref_train, with TRL's RewardTrainer.

loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin) [+ c * mean((r_chosen + r_rejected)^2)]
(the optional constant `margin` and the reward-centering term of Eisenstein et al. with coefficient c).

Backbone (`reward_model.backbone`): `base` = models/base (SmolLM2-135M-Instruct offline) with a fresh scalar
head; `hub:<org/name>` any sequence-classification or causal LM on the hub (needs the network); `local:<dir>`.
LoRA by default (the head is trained in full, peft's modules_to_save), full fine-tuning or QLoRA as for SFT/DPO.

Input: each pair is tokenized here, once, by the same function the RM is later read with
(scoring.reward_models.chat_ids), so training and inference see identical token ids. The context is the last
`context_turns` messages of the dialogue (1 = the final user turn): the PPO reward asks the RM about a single
prompt and its response, and on 2 CPU cores a shorter context buys more pairs per minute.

Output models/reward: a full sequence-classification model dir (adapter merged), its tokenizer, and
detoxrl_reward.json (format, context) for RewardModelScorer; metrics/reward_train.json; curves in
plots/reward_model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

from pydantic import Field

from .. import DetoxError
from ..io import atomic_dir, read_jsonl, write_json
from ..params import Block, PositiveInt, TrainParams
from ..scoring.reward_models import INFO_FILE, dialogue_ids
from . import common


class RewardModelParams(TrainParams):
    backbone: str
    """packaged:all-minilm-l6-v2 | hub:<org/name> | local:<dir> | base (models/base); a scalar head is added. The
    packaged MiniLM is offline; an encoder (MiniLM, hub:microsoft/deberta-v3-base or -large: network) is a
    cross-encoder over (prompt, response). Held-out HH accuracy: docs/judges.md, Reward model"""
    context_turns: PositiveInt | None
    """dialogue messages kept before the response (1 = last user turn); null = all"""
    max_length: PositiveInt
    """tokens per (prompt, response); the prompt loses its start first"""
    margin: float | None
    """constant margin in -log sigmoid(r_chosen - r_rejected - margin); null = none"""
    center_rewards_coefficient: Annotated[float, Field(ge=0)] | None
    """reward centering: weight c of the loss term c * mean((r_chosen + r_rejected)^2); null = off; Eisenstein et al.
    2023"""
    eval_steps: PositiveInt
    """validation on eval_pairs every this many steps"""
    eval_pairs: PositiveInt | None
    """validation pairs (first n of pref_val); null = all"""


# The params blocks this method reads: schema.py adds them to params.yaml's schema under these names.
BLOCKS = {"reward_model": Block(RewardModelParams, "reward model training (TRL RewardTrainer, Bradley-Terry loss) "
                                                   "on pref_train")}

ENCODERS = {"bert", "deberta", "deberta-v2", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert"}


def backbone_path(backbone: str, base_dir: str | Path) -> tuple[str, bool]:
    """(path or hub id, is_hub) of `base`, `packaged:<encoder>`, `hub:<id>` or `local:<dir>`."""
    if backbone == "base":
        return str(base_dir), False
    if backbone.startswith("packaged:"):
        from ..scoring.encoder import packaged_model_dir

        return str(packaged_model_dir(backbone[9:])[0]), False
    if backbone.startswith("hub:"):
        return backbone[4:], True
    if backbone.startswith("local:") and Path(backbone[6:]).is_dir():
        return backbone[6:], False
    raise DetoxError(f"reward_model.backbone: {backbone!r} must be 'base', 'packaged:all-minilm-l6-v2', "
                     "'hub:<org/name>' or 'local:<existing dir>'")


def tokenize_pair(record: dict, tokenizer, fmt: str, context_turns: int | None, max_length: int) -> dict:
    messages = record["prompt"][-context_turns:] if context_turns else record["prompt"]
    return {"chosen_ids": dialogue_ids(tokenizer, fmt, messages, record["chosen"], max_length),
            "rejected_ids": dialogue_ids(tokenizer, fmt, messages, record["rejected"], max_length)}


def load_backbone(path: str, is_hub: bool, tokenizer, quant, params: RewardModelParams):
    from transformers import AutoModelForSequenceClassification

    kw = {"num_labels": 1}
    if quant is not None:
        kw.update(quantization_config=quant, device_map={"": 0})
    model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def train_reward_model(base_dir: str | Path, train_path: str | Path, val_path: str | Path, out_dir: str | Path,
                       metrics_path: str | Path, plots_dir: str | Path, params: RewardModelParams,
                       callbacks=(), profiles: list[str] | None = None) -> dict:
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    quant = common.quantization_config(params, "reward_model")  # fails here, before anything loads, without CUDA
    path, is_hub = backbone_path(params.backbone, base_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # a decoder with a chat template reads the templated dialogue; an encoder (MiniLM, DeBERTa) is a cross-encoder
    # over (question, answer); the scorer reads the format from detoxrl_reward.json
    fmt = "chat" if tokenizer.chat_template else "pair"
    if fmt == "pair" and AutoConfig.from_pretrained(path).model_type not in ENCODERS:
        raise DetoxError(f"reward_model.backbone {params.backbone!r}: a causal LM whose tokenizer has no chat "
                         "template; pick an instruct/chat model, or an encoder (bert, deberta-v2, roberta, ...)")

    def dataset(rows: list[dict]) -> Dataset:
        recs = [tokenize_pair(r, tokenizer, fmt, params.context_turns, params.max_length) for r in rows]
        if params.margin is not None:
            for rec in recs:
                rec["margin"] = params.margin
        return Dataset.from_list(recs)

    train, val = read_jsonl(train_path), read_jsonl(val_path)[: params.eval_pairs]
    inputs = [train_path, val_path] + ([] if is_hub else [path])
    platform = common.platform(params, "reward_model", profiles)  # prints the precision it runs at, and why
    resume = common.resume_checkpoint(params.checkpoint_dir, common.fingerprint(params, inputs))
    set_seed(params.seed)  # the new scalar head is drawn at load, before the trainer seeds anything
    model = load_backbone(path, is_hub, tokenizer, quant, params)
    args = RewardConfig(**common.trainer_args(params, "reward_model"), eval_strategy="steps",
                        eval_steps=params.eval_steps, center_rewards_coefficient=params.center_rewards_coefficient,
                        remove_unused_columns=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(val),
                            processing_class=tokenizer, peft_config=common.lora_config(params.lora, "SEQ_CLS"),
                            callbacks=[common.make_curves_callback(plots_dir), *callbacks])
    common.exact_resume(trainer)
    output = trainer.train(resume_from_checkpoint=resume)
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if not evals or evals[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    validation = {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval_") and "runtime" not in k
                  and "per_second" not in k}
    metrics = {**common.train_metrics(trainer, output), **common.parameter_counts(trainer.model), "platform": platform,
               "pairs_seen": trainer.state.global_step * params.batch_size * params.grad_accum,
               "train_pairs": len(trainer.train_dataset), "validation_pairs": len(val),
               "backbone": params.backbone, "format": fmt, "context_turns": params.context_turns,
               "validation": validation}

    model = trainer.model
    if quant is not None:  # merge the adapter into full-precision weights, not the quantized ones it trained over
        from peft import PeftModel

        trainer.save_model(str(Path(params.checkpoint_dir) / "final"))
        model = PeftModel.from_pretrained(load_backbone(path, is_hub, tokenizer, None, params),
                                          Path(params.checkpoint_dir) / "final")
    if not common.is_main():  # data parallel: the main process alone writes the stage's outputs
        common.barrier()
        return metrics
    if params.lora.enabled:
        model = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps({"format": fmt, "context_turns": params.context_turns,
                                                 "backbone": params.backbone}, indent=2) + "\n")
    write_json(metrics_path, metrics)
    shutil.rmtree(params.checkpoint_dir, ignore_errors=True)
    common.barrier()
    return metrics
