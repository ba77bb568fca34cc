"""PPO test helpers shared by tests/unit/test_ppo.py, test_thinking.py, tests/e2e/test_data_parallel.py and its
`accelerate launch`ed worker (dp_worker.py): a learnable toy reward and small PPO params."""

from __future__ import annotations

from pathlib import Path

from detoxrl.schema import load_params
from detoxrl.training.ppo import PPOParams

ROOT = Path(__file__).resolve().parents[2]  # tests/support/ -> the project root


class LetterReward:
    """A trivially learnable reward: the share of the letter "a" in the response."""
    name, judges = "letter_a", []

    def score(self, prompts, responses):
        return [t.count("a") / max(len(t), 1) for t in responses]


def ppo_params(**kw) -> PPOParams:
    d = dict(seed=0, steps=12, batch_size=16, samples_per_prompt=1, minibatch_size=4, grad_accum_steps=1, epochs=4,
             lr=3e-3, max_new_tokens=8, temperature=1.0, top_p=1.0,
             lora=dict(r=8, alpha=16, dropout=0.0,
                       target_modules=["q_proj", "v_proj", "up_proj", "down_proj", "lm_head"]),
             kl=dict(coef=0.01, adaptive=False, target=6.0, horizon=1000), gamma=1.0, lam=0.95, clip_range=0.2,
             clip_range_value=0.2, vf_coef=0.1, entropy_coef=0.0, max_grad_norm=1.0, whiten_advantages=True,
             missing_eos_penalty=None, reward=load_params(ROOT / "params.yaml").ppo.reward.model_dump(),
             cvar=dict(enabled=False, alpha=0.5, anneal_steps=5), checkpoint_every=0, mixed_precision="none",
             compute=dict(num_processes=None, accelerate_config=None))
    d.update(kw)
    return PPOParams(**d)
