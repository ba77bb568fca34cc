"""Run by tests/e2e/test_data_parallel.py under `accelerate launch --num_processes N` (CPU processes, gloo).

  python dp_worker.py update <tiny model dir> <out dir>     one PPO update on a fixed rollout batch
  python dp_worker.py train <tiny model dir> <out dir>      two steps of train_ppo, recording each rank's prompts
  python dp_worker.py resume <tiny model dir> <out dir> [n]  three steps with a checkpoint after two; with n, every
                                                            process stops (KeyboardInterrupt) at its n-th scoring
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # its helpers beside it in tests/support (ppo_helpers, tiny)


def update(model_dir: Path, out: Path) -> None:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from detoxrl.training import ppo as P
    from ppo_helpers import ppo_params

    accelerator = Accelerator(cpu=True)
    procs = P.Processes(accelerator)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = P.PolicyWithValue(get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora))
    torch.nn.init.normal_(model.value_head.weight, std=0.1)  # a value head that is not zero: its loss matters
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2, eps=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    # the same global batch on every process (seeded), 8 responses of up to 6 tokens after 3 prompt tokens
    g = torch.Generator(device="cpu").manual_seed(1)
    rows, n_prompt, width = 8, 3, 6
    input_ids = torch.randint(2, 29, (rows, n_prompt + width), generator=g)
    lengths = torch.randint(2, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    attn = torch.cat([torch.ones(rows, n_prompt, dtype=torch.long), mask.long()], 1)
    scores = torch.randn(rows, generator=g)
    with torch.no_grad():  # on the whole batch on every process, so both runs start from the same numbers
        old_logprobs, _, old_values = model(input_ids, attn, n_prompt, 1.0)
        with unwrapped.policy.disable_adapter():
            ref_logprobs, _, _ = model(input_ids, attn, n_prompt, 1.0, with_values=False)
    mine = slice(procs.rank * rows // procs.world, (procs.rank + 1) * rows // procs.world)
    batch = P.Rollout(input_ids[mine], attn[mine], n_prompt, mask[mine], scores[mine], (old_logprobs * mask)[mine],
                      (old_values * mask)[mine], ref_logprobs[mine])
    p = ppo_params(epochs=1, minibatch_size=rows, batch_size=rows)
    P.ppo_update(model, optimizer, accelerator, batch, p, kl_coef=0.05, alpha=1.0, procs=procs)

    state = {**get_peft_model_state_dict(unwrapped.policy),
             **{f"value_head.{k}": v for k, v in unwrapped.value_head.state_dict().items()}}
    digest = hashlib.sha256(b"".join(v.detach().contiguous().numpy().tobytes() for _, v in sorted(state.items())))
    (out / f"rank{procs.rank}.sha256").write_text(digest.hexdigest())
    if accelerator.is_main_process:
        torch.save({k: v.detach().clone() for k, v in state.items()}, out / "state.pt")


class RecordingReward:
    """The letter-"a" reward of ppo_helpers, writing the prompts each process scored (one line per step)."""
    name, judges = "letter_a", []

    def __init__(self, out: Path, rank: int, stop_at: int | None = None):
        self.file = out / f"prompts.rank{rank}.jsonl"
        self.calls, self.stop_at = 0, stop_at

    def score(self, prompts, responses):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt  # the machine stops in the middle of a step
        with self.file.open("a") as fh:
            fh.write(json.dumps(prompts) + "\n")
        return [t.count("a") / max(len(t), 1) for t in responses]


def train(model_dir: Path, out: Path) -> None:
    import os

    from detoxrl.training import ppo as P
    from ppo_helpers import ppo_params

    prompts = out / "prompts.jsonl"
    rank = int(os.environ["RANK"])
    params = ppo_params(steps=2, batch_size=8, minibatch_size=4, epochs=1)
    final = P.train_ppo(model_dir, model_dir, prompts, out / "model", out / "ppo.json", out / "plots",
                        out / "ckpt", params, RecordingReward(out, rank), lambda text, tok: text, progress=False)
    (out / f"final.rank{rank}.json").write_text(json.dumps(final))


def resume(model_dir: Path, out: Path, stop_at: str | None = None) -> None:
    import os

    from detoxrl.training import ppo as P
    from ppo_helpers import ppo_params

    rank = int(os.environ["RANK"])
    params = ppo_params(steps=3, batch_size=8, minibatch_size=4, epochs=1, checkpoint_every=2)
    reward = RecordingReward(out, rank, int(stop_at) if stop_at else None)
    final = P.train_ppo(model_dir, model_dir, out / "prompts.jsonl", out / "model", out / "ppo.json", out / "plots",
                        out / "ckpt", params, reward, lambda text, tok: text, progress=False)
    (out / f"final.rank{rank}.json").write_text(json.dumps(final))


if __name__ == "__main__":
    from detoxrl.launch import end_processes

    try:
        {"update": update, "train": train, "resume": resume}[sys.argv[1]](
            Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:])
    finally:
        end_processes()
