"""The GPU check: the stages' GPU path on a random-initialised model, with ratios against the card's own limits.

One prepared script for a lent GPU machine (no network, no hub): a random-initialised model of Qwen2-1.5B's
configuration (or SmolLM2-135M's) with the tokenizer of models/base, in bf16 on CUDA. It times
  - the generation loop (evaluation/generate.py): tokens/s against the HBM-bandwidth limit (every decode step
    reads every weight once: limit = rows x bandwidth / weight bytes, bandwidth measured by a device copy here)
    and against `model.generate` with the same settings;
  - one short SFT and one DPO run through TRL, via the stages' own functions (training/sft.py, training/dpo.py):
    tokens/s against the bf16 matmul peak measured in the same run (a LoRA step costs about 4 x parameters FLOPs
    per token: forward, and backward through the activations but not the frozen weights);
  - PPO steps (training/ppo.py, a length reward so no judge is needed): samples/s;
  - a 4-bit QLoRA load and forward (bitsandbytes), if importable;
and the peak GPU memory of each part. vLLM is not built into the stages yet, so it is not timed.

  python benchmarks/gpu_check.py [--model qwen2-1.5b|smollm2-135m] [--tokenizer models/base]
  python benchmarks/gpu_check.py --smoke          # a tiny model of the same family: checks the script on a CPU

Wheels a bare GPU image (torch, transformers, peft, accelerate) lacks: trl, dvclive (and its dvc-free deps),
datasets, pydantic, typer, bitsandbytes for QLoRA; this package on PYTHONPATH (src/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {  # architecture shapes only; the vocabulary is the tokenizer's
    "qwen2-1.5b": ("Qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                                 rope_theta=1_000_000.0)),
    "smollm2-135m": ("Llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)),
}
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build_model(name: str, tokenizer_dir: Path, out: Path, smoke: bool, dtype) -> Path:
    import transformers
    from transformers import AutoTokenizer

    family, shape = CONFIGS[name]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = getattr(transformers, f"{family}Config")(
        vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **{**shape, **(SMOKE if smoke else {})})
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def peak_memory(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device) -> None:
    """Between parts: peak-memory counters, and accelerate's process-wide state (each stage sets its own precision,
    as it would in its own process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def copy_bandwidth(device, n_bytes: int) -> float:
    """Bytes/s a device copy moves (read + write), the practical memory-bandwidth limit of decoding."""
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device)
    y = x.clone()
    sync(device)
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 2 / best


def check_generation(model_dir: Path, device, prompts: list[str], k: int, new_tokens: int) -> dict:
    from detoxrl.evaluation.generate import sample_continuations
    from detoxrl.models.load import load_for_inference
    from detoxrl.params import GenerateParams

    model, tok = load_for_inference(model_dir, model_dir, device=device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    params = GenerateParams(engine="hf", prompt_format="raw", chat_instruction="", k=k, max_new_tokens=new_tokens,
                            temperature=1.0, top_p=1.0, seed=0, batch_size=len(prompts) * k,
                            compute=dict(num_processes=None, accelerate_config=None))
    sample_continuations(model, tok, prompts[:2], params, progress=False)  # warm-up
    reset_memory(device)
    sync(device)
    t = time.perf_counter()
    out = sample_continuations(model, tok, prompts, params, progress=False)
    sync(device)
    ours_s = time.perf_counter() - t
    tokens = sum(s["n_tokens"] for ss in out for s in ss)
    mem = peak_memory(device)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=True, top_p=1.0, max_new_tokens=new_tokens, num_return_sequences=k,
                             pad_token_id=tok.pad_token_id)
    sync(device)
    hf_s = time.perf_counter() - t
    hf_tokens = int((gen[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
    bandwidth = copy_bandwidth(device, min(weight_bytes, 2**31))
    rows = len(prompts) * k
    limit = rows * bandwidth / weight_bytes  # tokens/s if each decode step only read the weights once
    return {"tokens_per_s": tokens / ours_s, "hbm_limit_tokens_per_s": limit, "of_hbm_limit": tokens / ours_s / limit,
            "model_generate_tokens_per_s": hf_tokens / hf_s,
            "vs_model_generate": (tokens / ours_s) / (hf_tokens / hf_s),
            "rows": rows, "new_tokens": new_tokens, "bandwidth_gb_s": bandwidth / 1e9, "peak_gib": mem}


def train_params(stage: str, bf16: bool, steps: int):
    from detoxrl.schema import load_params

    base = getattr(load_params(Path(__file__).resolve().parents[1] / "params.yaml"), stage)
    return base.model_copy(update={"max_steps": steps, "batch_size": 4, "grad_accum": 1, "max_length": 256,
                                   "logging_steps": 1, "save_steps": 10_000, "bf16": bf16,
                                   "checkpoint_dir": str(Path(tempfile.mkdtemp()) / "ckpt")})


def records(n: int) -> list[dict]:
    text = "Tell me something kind about the weather today, please. " * 6
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"{i}: {text}"},
                                         {"role": "assistant", "content": text}]} for i in range(n)]


def check_training(model_dir: Path, device, n_params: int, peak: float, steps: int, tmp: Path) -> dict:
    from detoxrl.io import write_jsonl
    from detoxrl.training.dpo import train_dpo
    from detoxrl.training.sft import train_sft

    bf16 = device.type == "cuda"
    write_jsonl(tmp / "sft.jsonl", records(4 * steps + 4))
    pairs = [{"id": r["id"], "prompt": r["messages"][:1], "chosen": r["messages"][1]["content"],
              "rejected": "No."} for r in records(4 * steps + 4)]
    write_jsonl(tmp / "pairs.jsonl", pairs)
    out = {}
    for stage in ("sft", "dpo"):
        reset_memory(device)
        p = train_params(stage, bf16, steps)
        sync(device)
        t = time.perf_counter()
        if stage == "sft":
            m = train_sft(model_dir, tmp / "sft.jsonl", tmp / "sft_out", tmp / "sft.json", tmp / "sft_plots", p)
        else:
            m = train_dpo(model_dir, model_dir, tmp / "pairs.jsonl", tmp / "pairs.jsonl", tmp / "dpo_out",
                          tmp / "dpo.json", tmp / "dpo_plots", p.model_copy(update={"eval_pairs": 4}))
        sync(device)
        seconds = time.perf_counter() - t
        # tokens that went through the model: sequences per step x their length (DPO: chosen + rejected)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        text = tok.apply_chat_template(records(1)[0]["messages"], tokenize=False)
        seq = min(len(tok(text, add_special_tokens=False)["input_ids"]), p.max_length)
        tokens = m["steps"] * 4 * seq * (2 if stage == "dpo" else 1)
        rate = tokens / seconds  # the stage's wall time, model loading and saving included: a floor
        out[stage] = {"tokens_per_s": rate, "of_4N_peak": rate * 4 * n_params / peak, "seconds": seconds,
                      "peak_gib": peak_memory(device)}
    return out


def check_ppo(model_dir: Path, device, steps: int, tmp: Path) -> dict:
    from detoxrl.io import write_jsonl
    from detoxrl.schema import load_params
    from detoxrl.training.ppo import train_ppo

    class Length:
        name, judges = "length", []

        def score(self, prompts, responses):
            return [min(len(r), 200) / 200 for r in responses]

    write_jsonl(tmp / "ppo_prompts.jsonl", [{"id": f"p{i}", "subset": "x", "text": f"Prompt number {i} says"}
                                            for i in range(64)])
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml").ppo.model_copy(
        update={"steps": steps, "batch_size": 32, "minibatch_size": 8, "max_new_tokens": 48, "checkpoint_every": 0})
    reset_memory(device)
    train_ppo(model_dir, model_dir, tmp / "ppo_prompts.jsonl", tmp / "ppo_out", tmp / "ppo.json", tmp / "ppo_plots",
              tmp / "ppo_ckpt", p, Length(), lambda text, tok: text, progress=False)
    rows = (tmp / "ppo_plots/plots/metrics/time/step_s.tsv").read_text().splitlines()[1:]
    seconds = sum(float(r.split("\t")[1]) for r in rows)
    return {"samples_per_s": steps * p.batch_size / seconds, "precision": json.loads(
        (tmp / "ppo.json").read_text())["platform"]["precision"], "peak_gib": peak_memory(device)}


def check_qlora(model_dir: Path, device) -> dict:
    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"skipped": "bitsandbytes not installed"}
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    reset_memory(device)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, device_map={"": device.index or 0})
    ids = torch.randint(0, model.config.vocab_size, (4, 128), device=device)
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    return {"loss_finite": bool(torch.isfinite(torch.tensor(loss))), "peak_gib": peak_memory(device)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2-1.5b", choices=sorted(CONFIGS))
    ap.add_argument("--tokenizer", default="models/base")
    ap.add_argument("--smoke", action="store_true", help="a tiny model of the family: check the script, no numbers")
    ap.add_argument("--out", help="results file (default: benchmarks/results/gpu_check.json; --smoke writes none "
                                  "unless given: its numbers are no measurement)")
    args = ap.parse_args()

    from detoxrl import hardware

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    caps = hardware.detect()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"device: {caps.gpu_name or hardware.cpu_kind(caps)}; model {args.model}{' (smoke)' if args.smoke else ''}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(args.model, Path(args.tokenizer), tmp / "model", args.smoke, dtype)
        n_params = sum(p.numel() for p in
                       __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
        print(f"parameters {n_params / 1e6:.0f}M; measured {dtype} matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
        prompts = [f"Once upon a time in city number {i}, the people" for i in range(8 if args.smoke else 64)]
        results = {"device": caps.gpu_name or hardware.cpu_kind(caps), "model": args.model, "parameters": n_params,
                   "matmul_peak_tflops": peak / 1e12}
        results["generation"] = check_generation(model_dir, device, prompts, 4, 8 if args.smoke else 128)
        print("generation:", json.dumps(results["generation"]), flush=True)
        results["training"] = check_training(model_dir, device, n_params, peak, 2 if args.smoke else 8, tmp)
        print("training:", json.dumps(results["training"]), flush=True)
        results["ppo"] = check_ppo(model_dir, device, 1 if args.smoke else 4, tmp)
        print("ppo:", json.dumps(results["ppo"]), flush=True)
        results["qlora_4bit"] = check_qlora(model_dir, device)
        print("qlora_4bit:", json.dumps(results["qlora_4bit"]), flush=True)
    if args.out or not args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import write_results

        write_results("gpu_check", results, args.out, device=results["device"], flat=True)


if __name__ == "__main__":
    main()
