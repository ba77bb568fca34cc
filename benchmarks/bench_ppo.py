"""PPO (this repo) against TRL's GRPOTrainer: samples per second on the same task, in one run.

Same model (models/base + LoRA r=16), same prompts (data/processed/ppo_prompts.jsonl), 16
completions per optimisation batch (4 prompts x 4 completions in both; `--per-prompt 1` gives PPO
16 prompts x 1, its default shape, which pads to the longest of 16 prompts instead of 4), same
completion length, same reward (1 - offline judge toxicity), KL to the reference on in both,
matched optimisation passes per sample (PPO epochs = GRPO num_iterations), and matched numerics:
the same precision on both sides (fp32, or bf16 autocast: GRPOConfig's default is bf16, which on a
CPU with AVX512-BF16 is much faster, so leaving it on for GRPO alone would compare precisions, not
loops) and no gradient checkpointing on either (GRPOConfig turns it on by default; PPO does not
use it). Prints samples/s of each and the ratio (the PPO stage's memory: bench_ppo_memory.py).

  python benchmarks/bench_ppo.py [--steps 4] [--passes 1,4] [--tokens 24] [--precision fp32,bf16] [--per-prompt 4]
  python benchmarks/bench_ppo.py --processes 1,2     PPO alone, data parallel: 1 vs 2 processes of one thread each

`--processes` runs the same PPO (fp32, 16 responses per step in all) under `accelerate launch` with 1 and 2 CPU
processes (gloo, OMP_NUM_THREADS=1 each) and prints samples/s and their ratio: with one thread per process, 2
processes would reach 2x if data parallelism cost nothing; the shortfall is its overhead (gradient all-reduce,
gathers, padding to each process's own longest prompt).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
LORA = dict(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])


def reward_source():
    from detoxrl.schema import load_params
    from detoxrl.scoring import make_judge
    from detoxrl.scoring.rewards import ToxicityReward

    return ToxicityReward(make_judge("offline", load_params(ROOT / "params.yaml").judges), cache=None)


def run_ppo(steps: int, passes: int, tokens: int, prompts: Path, precision: str, per_prompt: int) -> float:
    from detoxrl.schema import load_params
    from detoxrl.training.ppo import PPOParams, train_ppo

    # the reward settings of params.yaml, switched to the plain toxicity reward GRPO gets too
    reward = load_params(ROOT / "params.yaml").ppo.reward.model_dump() | {"source": "toxicity", "judge": "offline"}

    params = PPOParams(
        seed=0, steps=steps, batch_size=16, samples_per_prompt=per_prompt, minibatch_size=16, grad_accum_steps=1,
        epochs=passes, lr=2e-4,
        max_new_tokens=tokens, temperature=1.0, top_p=1.0, lora=LORA,
        kl=dict(coef=0.05, adaptive=False, target=6.0, horizon=10000), gamma=1.0, lam=0.95, clip_range=0.2,
        clip_range_value=0.2, vf_coef=0.1, entropy_coef=0.0, max_grad_norm=1.0, whiten_advantages=True,
        missing_eos_penalty=None, reward=reward,
        cvar=dict(enabled=False, alpha=1.0, anneal_steps=0), checkpoint_every=0,
        mixed_precision="bf16" if precision == "bf16" else "none",
        compute=dict(num_processes=None, accelerate_config=None))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_ppo(ROOT / "models/base", ROOT / "models/base", prompts, tmp / "out", tmp / "m.json", tmp / "plots",
                  tmp / "ckpt", params, reward_source(), lambda text, tok: text, progress=False)
        # the loop's own per-step wall times (rollout to optimiser step), like GRPO's StepTimer below:
        # model loading, merging and saving are left out of both
        tsv = tmp / "plots" / "plots" / "metrics" / "time" / "step_s.tsv"
        if not tsv.exists():  # data parallel: only the main process writes the curves
            return float("nan")
        rows = tsv.read_text().splitlines()[1:]
        return steps * 16 / sum(float(r.split("\t")[1]) for r in rows)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (GRPO generates inside its training step), as PPO logs its own."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.t)


def run_grpo(steps: int, passes: int, tokens: int, prompts: Path, precision: str) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOTrainer

    from detoxrl.training.grpo import OnlineRLParams, build_config

    reward = reward_source()
    texts = [json.loads(line)["text"] for line in prompts.read_text().splitlines()]

    def toxicity_reward(completions, **_):
        return reward.score([], completions)

    # the grpo stage's own configuration (training/grpo.py), at the bench's shape: 4 prompts x 4 per round, `passes`
    # optimizer steps on each round (num_iterations), the precision given to both loops, no gradient checkpointing
    params = OnlineRLParams(seed=0, steps=steps, prompts_per_step=4, num_generations=4, num_iterations=passes, lr=2e-4,
                            beta=0.05, epsilon=0.2, max_grad_norm=1.0, max_new_tokens=tokens, temperature=1.0,
                            top_p=1.0, lora=LORA, mixed_precision="bf16" if precision == "bf16" else "none",
                            gradient_checkpointing=False, save_steps=0,
                            compute=dict(num_processes=None, accelerate_config=None))
    with tempfile.TemporaryDirectory() as tmp:
        args = build_config("grpo", params, 0, tmp, "bf16" if precision == "bf16" else "none", use_cpu=True)
        trainer = GRPOTrainer(model=str(ROOT / "models/base"), reward_funcs=toxicity_reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": texts}),
                              peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                     target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        return steps * 16 / sum(timer.seconds)


def data_parallel(processes: list[int], steps: int, tokens: int) -> dict:
    """samples/s of PPO under N CPU processes of one thread each, launched as a user would."""
    import os
    import subprocess
    import sys

    from detoxrl.launch import free_port

    rates = {}
    for n in processes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rate.txt"
            cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *(["--multi_gpu"] if n > 1 else []),
                   "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                   "no", "--main_process_port", str(free_port()), __file__, "--worker", str(out),
                   "--steps", str(steps), "--tokens", str(tokens)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
            rates[n] = float(out.read_text())
        print(f"data parallel: {n} process(es) x 1 thread: PPO {rates[n]:.2f} samples/s, "
              f"{rates[n] / rates[processes[0]]:.2f}x of {processes[0]} (ideal {n / processes[0]:.0f}x)", flush=True)
    return {"steps": steps, "tokens": tokens, "precision": "fp32", "threads_per_process": 1,
            "processes": {str(n): {"samples_per_s": rates[n], "speedup": rates[n] / rates[processes[0]]}
                          for n in processes}}


def worker(out: Path, steps: int, tokens: int) -> None:
    from accelerate import PartialState

    rate = run_ppo(steps, 1, tokens, ROOT / "data/processed/ppo_prompts.jsonl", "fp32", 1)
    if PartialState().is_main_process:
        out.write_text(str(rate))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", help="e.g. 1,2: PPO alone under that many CPU processes of one thread each")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=4, help="optimisation batches of 16 completions")
    ap.add_argument("--passes", default="1,4")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--per-prompt", type=int, default=4,
                    help="PPO responses per prompt: 4 gives GRPO's batch shape (4 prompts x 4), 1 is 16 prompts x 1")
    ap.add_argument("--precision", default="fp32,bf16", help="fp32 and/or bf16 (autocast), applied to both loops")
    ap.add_argument("--out", help="results file (default: benchmarks/results/bench_ppo.json, "
                                  "bench_ppo-processes.json with --processes)")
    args = ap.parse_args()
    if args.worker:
        return worker(Path(args.worker), args.steps, args.tokens)
    prompts = ROOT / "data/processed/ppo_prompts.jsonl"
    from accelerate.state import AcceleratorState

    from detoxrl import hardware

    caps = hardware.detect()
    # ratios from CPUs of other kinds differ: bf16 autocast is native on AVX512-BF16/AMX, emulated (slow) elsewhere
    print(f"machine: {hardware.cpu_kind(caps)}; bf16: {hardware.native_bf16(caps)[1]}; "
          f"ppo.mixed_precision auto -> {hardware.resolve_precision('auto', caps)[0]}", flush=True)
    from common import write_results

    if args.processes:
        results = data_parallel([int(n) for n in args.processes.split(",")], args.steps, args.tokens)
        write_results("bench_ppo-processes", results, args.out)
        return
    results = {"steps": args.steps, "tokens": args.tokens, "per_prompt": args.per_prompt,
               "auto_precision": hardware.resolve_precision("auto", caps)[0], "runs": {}}

    for precision in args.precision.split(","):
        for passes in (int(x) for x in args.passes.split(",")):
            AcceleratorState._reset_state(True)  # GRPO's trainer leaves its own accelerator settings in the process
            ppo = run_ppo(args.steps, passes, args.tokens, prompts, precision, args.per_prompt)
            AcceleratorState._reset_state(True)
            grpo = run_grpo(args.steps, passes, args.tokens, prompts, precision)
            print(f"{precision} passes={passes}: PPO {ppo:.2f} samples/s, GRPO {grpo:.2f} samples/s, "
                  f"PPO/GRPO = {ppo / grpo:.2f}x", flush=True)
            results["runs"][f"{precision}_passes{passes}"] = {"ppo_samples_per_s": ppo, "grpo_samples_per_s": grpo,
                                                              "ppo_over_grpo": ppo / grpo}
    write_results("bench_ppo", results, args.out)


if __name__ == "__main__":
    main()
