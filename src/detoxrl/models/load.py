"""Load a model directory for inference: a full HF model dir, or a LoRA adapter dir over the base."""

from __future__ import annotations

from pathlib import Path

from .. import DetoxError, hardware


def load_for_inference(model_dir: str | Path, base_dir: str | Path = "models/base", device=None):
    """Return (model, tokenizer) in eval mode on `device` (default: this process's accelerator device, the CPU
    where there is none). A LoRA adapter is merged into its base for speed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DetoxError(f"{model_dir}: model directory not found (run `dvc repro` or `dvc pull`)")
    adapter_cfg = model_dir / "adapter_config.json"
    if adapter_cfg.exists():
        from peft import PeftModel

        base = Path(base_dir)
        if not base.is_dir():
            raise DetoxError(f"{model_dir}: LoRA adapter needs its base model at {base}, which is missing")
        model = AutoModelForCausalLM.from_pretrained(base)
        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
        tok_dir = model_dir if (model_dir / "tokenizer_config.json").exists() else base
    else:
        if not (model_dir / "config.json").exists():
            raise DetoxError(f"{model_dir}: neither a model (config.json) nor a LoRA adapter (adapter_config.json)")
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok_dir = model_dir
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model.to(device or hardware.process_state().device), tokenizer


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


