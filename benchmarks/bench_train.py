"""Training throughput of the TRL stages (sft, dpo, reward_model) against the machine's FLOP limit.

A LoRA training step costs about 4 x parameters FLOPs per token (forward 2N, backward through the frozen
weights to the activations 2N; the adapters' own weight gradients are negligible), so
    limit (tokens/s) = measured matmul peak / (4 x parameters).
DPO also runs the reference (adapter disabled) forward on every token, 2N more: its ratio is given against
both 4N (the issue's yardstick) and 6N (the work it really does).

Each stage runs with its default params from params.yaml for `--steps` optimizer steps (the first one is
warm-up and not timed); tokens/s = (tokens the trainer reports, `num_tokens`) / time between log points.
A raw LoRA step (forward + backward + AdamW on one fixed 256-token sequence, no trainer, no data pipeline; the
loss on its second half, as the stages score only the response, with the LM head run on those positions only)
gives the ceiling the trainer loops are compared with.

`--compiled` also times the raw step under torch.compile (inductor; about 100 s of compiling first), the ceiling
with the elementwise work fused.

  python benchmarks/bench_train.py [--steps 6] [--stages sft,dpo,reward_model] [--compiled]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import matmul_peak_flops, write_results
from transformers import TrainerCallback

from detoxrl.schema import load_params


class StepTimer(TrainerCallback):
    """(time, cumulative num_tokens) at every log point after the first optimizer step."""

    def __init__(self):
        self.points: list[tuple[float, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs and state.global_step >= 1:
            self.points.append((time.perf_counter(), float(logs["num_tokens"])))

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0)


def raw_lora_rate(base: str, seq_len: int = 256, steps: int = 4, compiled: bool = False) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    p = load_params("params.yaml").sft.lora
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=0.0, target_modules=p.target_modules,
                                      task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len))
    trunk, head, half = model.get_base_model().model, model.get_base_model().lm_head, seq_len // 2

    def loss():
        hidden = trunk(input_ids=ids).last_hidden_state[0, half - 1:-1]
        return torch.nn.functional.cross_entropy(head(hidden), ids[0, half:])

    forward = torch.compile(loss) if compiled else loss
    times = []
    for _ in range(steps + 2 if compiled else steps + 1):  # compiled: the first two steps compile
        t = time.perf_counter()
        forward().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return seq_len / min(times[2:] if compiled else times[1:])


def run_stage(stage: str, steps: int, scratch: Path) -> float:
    params = load_params("params.yaml")
    timer = StepTimer()
    common = dict(max_steps=steps + 1, logging_steps=1, save_steps=10_000, checkpoint_dir=str(scratch / stage))
    if stage == "sft":
        from detoxrl.training.sft import train_sft

        train_sft("models/base", "data/processed/sft.jsonl", scratch / "out-sft", scratch / "sft.json",
                  scratch / "plots-sft", params.sft.model_copy(update=common), callbacks=[timer])
    elif stage == "dpo":
        from detoxrl.training.dpo import train_dpo

        train_dpo("models/sft", "models/base", "data/processed/pref_train.jsonl", "data/processed/pref_val.jsonl",
                  scratch / "out-dpo", scratch / "dpo.json", scratch / "plots-dpo",
                  params.dpo.model_copy(update={**common, "eval_steps": 10_000, "eval_pairs": 1}), callbacks=[timer])
    elif stage == "reward_model":
        from detoxrl.training.reward_model import train_reward_model

        train_reward_model("models/base", "data/processed/pref_train.jsonl", "data/processed/pref_val.jsonl",
                           scratch / "out-rm", scratch / "rm.json", scratch / "plots-rm",
                           params.reward_model.model_copy(update={**common, "eval_steps": 10_000, "eval_pairs": 1}),
                           callbacks=[timer])
    return timer.rate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--stages", default="sft,dpo,reward_model")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--out", help="results file (default: benchmarks/results/bench_train.json)")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained("models/base").parameters())
    peak = matmul_peak_flops()
    limit = peak / (4 * n)
    print(f"threads={torch.get_num_threads()} params={n:,} matmul peak={peak / 1e9:.1f} GFLOP/s "
          f"-> 4N limit {limit:.0f} tokens/s")
    raw = raw_lora_rate("models/base")
    print(f"raw LoRA step (256 tokens): {raw:.0f} tokens/s = {raw / limit:.0%} of the 4N limit")
    results = {"parameters": n, "matmul_peak_gflops": peak / 1e9, "limit_4n_tokens_per_s": limit,
               "raw_lora_step": {"tokens_per_s": raw, "ratio_to_4n": raw / limit}, "stages": {}}
    if args.compiled:
        fused = raw_lora_rate("models/base", compiled=True)
        print(f"raw LoRA step under torch.compile: {fused:.0f} tokens/s = {fused / limit:.0%} of the 4N limit")
        results["raw_lora_step_compiled"] = {"tokens_per_s": fused, "ratio_to_4n": fused / limit}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in filter(None, args.stages.split(",")):
            rate = run_stage(stage, args.steps, Path(tmp))
            extra = f", {rate / (peak / (6 * n)):.0%} of 6N (with the reference forward)" if stage == "dpo" else ""
            print(f"{stage}: {rate:.0f} tokens/s = {rate / limit:.0%} of the 4N limit{extra}; "
                  f"{rate / raw:.0%} of the raw LoRA step")
            results["stages"][stage] = {"tokens_per_s": rate, "ratio_to_4n": rate / limit,
                                        "ratio_to_raw_step": rate / raw,
                                        **({"ratio_to_6n": rate / (peak / (6 * n))} if stage == "dpo" else {})}
    write_results("bench_train", results, args.out)


if __name__ == "__main__":
    main()
