"""`generate.engine: vllm`: the same records as the HF loop (generate.py), sampled by vLLM on a CUDA GPU.

vLLM (PyPI `vllm`) batches and pages the KV cache itself, so on a GPU it generates many times faster than a
Python decode loop. It honours the same params: k samples per prompt (`n`), temperature, top-p, max_new_tokens and
the seed (one per request, `seed + prompt index`, so a prompt's samples do not depend on its batch). A LoRA adapter
directory is merged into its base first (vLLM then serves a plain model). The HF loop stays the CPU default and the
reference; this engine has not run in this repo's tests (no GPU, and vLLM's wheel is too large to carry to a lent
machine): only its refusal without CUDA or without vllm is tested.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .. import DetoxError


def check_available() -> None:
    """Fail before any work, in one sentence naming the param, where vLLM cannot run."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise DetoxError("generate.engine: vllm needs a CUDA GPU and this machine has none; set generate.engine: hf")
    if importlib.util.find_spec("vllm") is None:
        raise DetoxError("generate.engine: vllm needs the vllm package (pip install vllm); or set generate.engine: hf")


def vllm_samples(model_dir: Path, base_dir: Path, prompts: list[str], params) -> list[list[dict]]:
    from vllm import LLM, SamplingParams

    from ..models.load import load_for_inference

    with tempfile.TemporaryDirectory() as tmp:
        if (model_dir / "adapter_config.json").exists():  # vLLM serves plain weights: merge the adapter first
            model, tokenizer = load_for_inference(model_dir, base_dir, device="cpu")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            model_dir = Path(tmp)
        llm = LLM(model=str(model_dir), seed=params.seed)
        requests = [SamplingParams(n=params.k, temperature=params.temperature, top_p=params.top_p,
                                   max_tokens=params.max_new_tokens, seed=params.seed + i) for i in range(len(prompts))]
        outputs = llm.generate(prompts, requests)
    return [[{"text": o.text, "n_tokens": len(o.token_ids), "eos": o.finish_reason == "stop"} for o in out.outputs]
            for out in outputs]
