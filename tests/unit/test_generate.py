import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from detoxrl.evaluation.generate import format_prompt, generate, sample_continuations, sample_top_p
from detoxrl.io import read_jsonl, write_jsonl
from detoxrl.params import GenerateParams
from tiny import build_tiny_model


def gparams(**kw):
    base = dict(engine="hf", prompt_format="raw", chat_instruction="Continue the following text.", k=3,
                max_new_tokens=6, temperature=1.0, top_p=0.9, seed=11, batch_size=6,
                compute=dict(num_processes=None, accelerate_config=None))
    base.update(kw)
    return GenerateParams(**base)


@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory):
    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "model")


PROMPTS = ["The quick brown fox", "I can't believe you would", "Hello",
           "A much longer prompt that needs padding on the left"]


@pytest.mark.parametrize("tiers", [(256, 4096), (2,), ()])
def test_top_p_samples_only_the_nucleus_in_proportion(tiers):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * 6)
    logits = torch.log(probs.clamp_min(1e-12)).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    tokens = sample_top_p(logits, 1.0, 0.8, g, tiers=tiers)
    counts = torch.bincount(tokens, minlength=10).float() / len(tokens)
    # nucleus for p=0.8: {0, 1} (0.5 + 0.3 reaches 0.8); renormalised 0.625 / 0.375
    assert counts[2:].sum() == 0
    assert counts[0] == pytest.approx(0.625, abs=0.015) and counts[1] == pytest.approx(0.375, abs=0.015)
    # a nucleus just past a boundary includes the crossing token
    tokens = sample_top_p(logits, 1.0, 0.81, torch.Generator().manual_seed(0), tiers=tiers)
    assert set(tokens.tolist()) == {0, 1, 2}


def test_decode_loop_matches_hf_greedy(tiny_dir):
    """With a near-zero temperature our KV-cached, left-padded loop must reproduce HF's greedy decode."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ours = sample_continuations(model, tok, PROMPTS, gparams(k=2, temperature=1e-5, top_p=1.0, batch_size=4),
                                progress=False)
    for prompt, samples in zip(PROMPTS, ours):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id)
        expected = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert [s["text"] for s in samples] == [expected, expected]


def test_stops_at_eos(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 50.0  # EOS is all but certain
    model.lm_head = head
    out = sample_continuations(model, tok, PROMPTS, gparams(), progress=False)
    for samples in out:
        assert [s["eos"] for s in samples] == [True] * 3
        assert all(s["text"] == "" and s["n_tokens"] == 1 for s in samples)


def test_generate_stage_output(tiny_dir, tmp_path):
    prompts = tmp_path / "eval_prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "subset": "challenging" if i % 2 else "nontoxic", "text": t}
                          for i, t in enumerate(PROMPTS)])
    n = generate(tiny_dir, tiny_dir, prompts, tmp_path / "gen.jsonl", gparams())
    rows = read_jsonl(tmp_path / "gen.jsonl")
    assert n == len(rows) == len(PROMPTS) * 3
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(f"p{i}", j) for i in range(4) for j in range(3)]
    assert {r["subset"] for r in rows} == {"challenging", "nontoxic"}
    for r in rows:
        assert set(r) == {"prompt_id", "subset", "sample", "text", "n_tokens", "eos"}
        assert 0 < r["n_tokens"] <= 6
    texts = [r["text"] for r in rows if r["prompt_id"] == "p0"]
    assert len(set(texts)) > 1  # sampling, not greedy
    generate(tiny_dir, tiny_dir, prompts, tmp_path / "again.jsonl", gparams())
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "gen.jsonl").read_bytes()


def test_chat_format_wraps_prompt_in_template(base_model_dir):
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    text = format_prompt("You are such a", tok, gparams(prompt_format="chat"))
    assert text.startswith("<|im_start|>system")
    assert "<|im_start|>user\nContinue the following text.\n\nYou are such a<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert format_prompt("You are such a", tok, gparams()) == "You are such a"


def test_lora_adapter_dir_loads_over_base(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from detoxrl.models.load import load_for_inference

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged, _ = load_for_inference(tmp_path / "adapter", tiny_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_dir)(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model


def test_vllm_engine_refuses_before_any_work_where_it_cannot_run(tmp_path):
    """No CUDA here (and no vllm): selecting the engine fails at once with one sentence naming the param, and writes
    nothing. (The vLLM path itself cannot run on this machine; see evaluation/vllm_engine.py.)"""
    import torch

    from detoxrl import DetoxError
    from detoxrl.evaluation.generate import generate

    assert not torch.cuda.is_available()
    with pytest.raises(DetoxError, match=r"^generate.engine: vllm needs a CUDA GPU and this machine has none; "
                                         r"set generate.engine: hf$"):
        generate(tmp_path / "no-model", tmp_path / "no-base", tmp_path / "no-prompts.jsonl", tmp_path / "out.jsonl",
                 gparams(engine="vllm"))
    assert not (tmp_path / "out.jsonl").exists()
