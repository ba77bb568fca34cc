"""The `sft` stage: supervised fine-tuning of the base model on the HH-RLHF chosen responses (TRL SFTTrainer).

Each data/processed/sft.jsonl record {id, messages} becomes TRL's conversational prompt-completion format:
prompt = messages[:-1], completion = [the last (assistant) message]. SFTTrainer renders both with the chat
template and masks the prompt (`completion_only_loss`), so the loss covers only the final assistant turn
(its text and the closing <|im_end|>), never the user turns or the earlier assistant turns of the dialogue.

LoRA (peft) by default, full fine-tuning with `sft.lora.enabled: false`, QLoRA with `sft.quantization: 4bit|8bit`
(CUDA only). models/sft is the LoRA adapter + tokenizer (load_for_inference merges it over models/base), or a full
model dir when `sft.merge: true` or for full fine-tuning. Outputs are written atomically; see common.py for
resuming an interrupted run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json
from ..params import Block, TrainParams
from . import common, lm_head


class SFTParams(TrainParams):
    merge: bool
    """LoRA only: true = models/sft is the adapter merged into the base (a full model dir); false = the adapter"""


# The params blocks this method reads: schema.py adds them to params.yaml's schema under these names.
BLOCKS = {"sft": Block(SFTParams, "supervised fine-tuning (TRL SFTTrainer) of models/base on sft.jsonl")}


def to_prompt_completion(record: dict) -> dict:
    """{id, messages} -> TRL conversational prompt-completion: the last (assistant) turn is the completion."""
    *prompt, last = record["messages"]
    assert last["role"] == "assistant", f"{record['id']}: the last message must be the assistant's"
    return {"prompt": prompt, "completion": [last]}


def build_trainer(model, tokenizer, records: list[dict], params: SFTParams, callbacks=()):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    lm_head.install()  # CPU: LM head on completion positions only, logits not recomputed in backward
    args = SFTConfig(**common.trainer_args(params, "sft"), completion_only_loss=True, packing=False)
    dataset = Dataset.from_list([to_prompt_completion(r) for r in records])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=common.lora_config(params.lora), callbacks=list(callbacks))
    common.exact_resume(trainer)
    return trainer


def train_sft(base_dir: str | Path, data_path: str | Path, out_dir: str | Path, metrics_path: str | Path,
              plots_dir: str | Path, params: SFTParams, callbacks=(),
              profiles: list[str] | None = None) -> dict:
    from transformers import AutoTokenizer

    from ..models.load import load_for_inference

    quant = common.quantization_config(params, "sft")  # fails here, before anything loads, without CUDA
    records = read_jsonl(data_path)
    platform = common.platform(params, "sft", profiles)  # prints the precision it runs at, and why
    resume = common.resume_checkpoint(params.checkpoint_dir, common.fingerprint(params, [base_dir, data_path]))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    trainer = build_trainer(common.load_model(base_dir, quant), tokenizer, records, params,
                            [common.make_curves_callback(plots_dir), *callbacks])
    output = trainer.train(resume_from_checkpoint=resume)
    metrics = {**common.train_metrics(trainer, output), **common.parameter_counts(trainer.model), "platform": platform,
               "examples": len(trainer.train_dataset), "lora": params.lora.enabled, "merged": False,
               "train_seconds": round(float(output.metrics.get("train_runtime", 0.0)), 1)}

    final = Path(params.checkpoint_dir) / "final"
    trainer.save_model(str(final))  # the adapter (LoRA) or the whole model; every process takes part (ZeRO-3)
    if not common.is_main():  # data parallel: the main process alone writes the stage's outputs
        common.barrier()
        return metrics
    tokenizer.save_pretrained(final)
    with atomic_dir(out_dir) as tmp:
        if params.lora.enabled and params.merge:
            # Merged into full-precision base weights (not the quantized ones a QLoRA run trained over).
            merged, _ = load_for_inference(final, base_dir, device="cpu")
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            metrics["merged"] = True
        else:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
            common.sort_target_modules(Path(tmp) / "adapter_config.json")
    write_json(metrics_path, metrics)
    shutil.rmtree(params.checkpoint_dir, ignore_errors=True)
    common.barrier()
    return metrics
