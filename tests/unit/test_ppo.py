import json
import math
import shutil

import pytest
import torch
from ppo_helpers import LetterReward, ppo_params
from tiny import build_tiny_char_model

from detoxrl import DetoxError
from detoxrl.training import ppo as P


def test_per_token_rewards_put_kl_on_every_token_and_score_on_the_last():
    scores = torch.tensor([2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the response ended at t = 1
    rewards, kl = P.per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 2.0, 0.0]]))


def test_gae_hand_computed():
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = P.gae(torch.tensor([[0.0, 0.0, 1.0]]), values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 0.75, 1.0]]))
    # a padded tail contributes nothing: neither its reward nor its value
    adv, ret = P.gae(torch.tensor([[0.0, 1.0, 9.0]]), values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.25, 0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.75, 1.0, 0.0]]))
    # gamma discounts the next value
    adv, _ = P.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.9, 1.0]]))


def test_whitening_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = P.masked_whiten(x, mask)
    valid = w[mask.bool()]
    assert valid.mean().abs() < 1e-6 and (valid.pow(2).mean() - 1).abs() < 1e-4
    assert torch.allclose(valid, torch.tensor([-1.3416, -0.4472, 0.4472, 1.3416]), atol=1e-4)
    assert (w[~mask.bool()] == 0).all()


def test_clipped_policy_loss():
    mask = torch.ones(1, 1)
    old = torch.zeros(1, 1)
    up = torch.log(torch.tensor([[1.5]]))
    loss, clip_frac, approx_kl = P.policy_loss(up, old, torch.ones(1, 1), mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-1.2)  # positive advantage: the gain is clipped at 1.2
    assert clip_frac.item() == 1.0 and approx_kl.item() == pytest.approx(0.5 - math.log(1.5))
    loss, _, _ = P.policy_loss(up, old, -torch.ones(1, 1), mask, clip_range=0.2)
    assert loss.item() == pytest.approx(1.5)  # negative advantage: the pessimistic, unclipped term
    loss, clip_frac, approx_kl = P.policy_loss(old, old, torch.tensor([[2.0]]), mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-2.0) and clip_frac.item() == 0 and approx_kl.item() == 0


def test_clipped_value_loss():
    mask = torch.ones(1, 1)
    loss = P.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)  # the clipped prediction (0.2) is the worse one
    loss = P.value_loss(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.9 ** 2)


def test_cvar_schedule_and_selection():
    assert [P.cvar_alpha(s, 0.2, 10) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert P.cvar_alpha(3, 0.4, 0) == 0.4
    returns = torch.tensor([3.0, 1.0, 2.0, 0.0, 5.0])
    assert P.cvar_select(returns, 0.4).tolist() == [3, 1]
    assert P.cvar_select(returns, 0.01).tolist() == [3]  # at least one sample
    assert sorted(P.cvar_select(returns, 1.0).tolist()) == [0, 1, 2, 3, 4]


def test_adaptive_kl_controller():
    ctl = P.KLController(coef=0.1, target=6.0, horizon=100)
    ctl.update(kl=12.0, n_samples=16)
    assert ctl.coef == pytest.approx(0.1 * (1 + 0.2 * 16 / 100))  # error clipped at +0.2
    ctl.update(kl=4.5, n_samples=16)
    assert ctl.coef == pytest.approx(0.1 * 1.032 * (1 - 0.25 * 0.16 * 0.8))  # error 4.5/6 - 1 = -0.25 -> -0.2
    fixed = P.KLController(coef=0.1, target=None, horizon=100)
    fixed.update(kl=100.0, n_samples=16)
    assert fixed.coef == 0.1


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_char_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "ppo_prompts.jsonl"
    words = ["The", "A man", "She said", "Why", "Our city", "When the", "It is", "They"]
    path.write_text("".join(json.dumps({"id": f"p{i}", "subset": "x", "text": w}) + "\n"
                            for i, w in enumerate(words * 3)))
    return path


def run(tiny_dir, prompts, tmp_path, params, reward=None):
    return P.train_ppo(tiny_dir, tiny_dir, prompts, tmp_path / "out", tmp_path / "ppo.json", tmp_path / "plots",
                       tmp_path / "ckpt", params, reward or LetterReward(), lambda text, tok: text, progress=False)


def test_short_run_raises_a_learnable_reward(tiny_dir, prompts, tmp_path):
    final = run(tiny_dir, prompts, tmp_path, ppo_params())
    history = [float(line.split("\t")[-1]) for line in
               (tmp_path / "plots" / "plots" / "metrics" / "reward" / "score_mean.tsv").read_text().splitlines()[1:]]
    assert len(history) == 12
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last > first + 0.2, history  # measured: about 0.06 -> 0.44
    assert set(json.loads((tmp_path / "ppo.json").read_text())) >= {
        "reward_score_mean", "objective_kl", "policy_entropy", "loss_value", "policy_clip_frac", "response_eos_rate"}
    assert final["judges_in_reward"] == []
    # the saved policy is a plain HF dir that evaluation can load
    from detoxrl.models.load import load_for_inference
    model, _ = load_for_inference(tmp_path / "out", tiny_dir)
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    assert not (tmp_path / "ckpt").exists()  # checkpoints are cleaned on success


def test_nan_reward_stops_with_the_step(tiny_dir, prompts, tmp_path):
    class NaNReward(LetterReward):
        name = "nan"

        def score(self, prompts, responses):
            return [float("nan")] * len(responses)

    with pytest.raises(DetoxError, match=r"ppo step 0: the reward source nan returned NaN/inf"):
        run(tiny_dir, prompts, tmp_path, ppo_params(steps=2), NaNReward())
    assert not (tmp_path / "out").exists()


def interrupted_at(call: int) -> LetterReward:
    """A reward source whose `call`-th score() raises KeyboardInterrupt, as a machine stopping mid-step."""
    class Interrupted(LetterReward):
        calls = 0

        def score(self, prompts, responses):
            self.calls += 1
            if self.calls == call:
                raise KeyboardInterrupt
            return super().score(prompts, responses)

    return Interrupted()


def test_resume_continues_from_the_checkpoint(tiny_dir, prompts, tmp_path):
    params = ppo_params(steps=5, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, prompts, tmp_path, params, interrupted_at(4))  # the machine stops during step 3
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "plots")  # as DVC does: a stage's plot outputs are deleted before it reruns
    counted = LetterReward()
    calls = []
    counted.score = lambda p, r: calls.append(1) or LetterReward().score(p, r)
    run(tiny_dir, prompts, tmp_path, params, counted)
    assert len(calls) == 3  # steps 2, 3, 4 only
    assert (tmp_path / "out" / "config.json").exists()
    # the curves are whole: steps 0-1 replayed from the checkpoint, then 2-4
    rows = (tmp_path / "plots" / "plots" / "metrics" / "objective" / "kl.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == [0, 1, 2, 3, 4]


def test_a_checkpoint_from_another_sft_model_is_not_resumed(tiny_dir, prompts, tmp_path, capsys):
    """An interrupted run over one SFT model must not be continued over a retrained one (same path, same params)."""
    sft = build_tiny_char_model(tmp_path / "sft", seed=0)
    params = ppo_params(steps=3, checkpoint_every=2)

    def go(reward):
        return P.train_ppo(sft, tiny_dir, prompts, tmp_path / "out", tmp_path / "ppo.json", tmp_path / "plots",
                           tmp_path / "ckpt", params, reward, lambda text, tok: text, progress=False)

    with pytest.raises(KeyboardInterrupt):
        go(interrupted_at(3))
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)["step"] == 2
    build_tiny_char_model(sft, seed=1)  # the SFT stage reran: new weights in the same directory
    calls = []
    counted = LetterReward()
    counted.score = lambda p, r: calls.append(1) or LetterReward().score(p, r)
    go(counted)
    assert len(calls) == 3  # all three steps, from step 0
    assert "discarding a checkpoint" in capsys.readouterr().out


def test_cvar_trains_on_the_worst_samples(tiny_dir, prompts, tmp_path):
    final = run(tiny_dir, prompts, tmp_path, ppo_params(steps=3, cvar=dict(enabled=True, alpha=0.25, anneal_steps=2)))
    assert final["cvar_alpha"] == pytest.approx(0.25)


def lora_policy(model_dir, seed=0):
    """The tiny model as PPO builds its policy, with a random (non-zero) adapter and value head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    params = ppo_params()
    torch.manual_seed(seed)
    policy = P.PolicyWithValue(get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir).eval(),
        LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, target_modules=list(params.lora.target_modules),
                   init_lora_weights=False, task_type="CAUSAL_LM")))
    torch.nn.init.normal_(policy.value_head.weight)
    return policy.eval()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_rollout_logprobs_and_values_equal_a_full_forward(tiny_dir, top_p):
    """PPO takes its old log-probs and values from the sampler instead of a second forward pass:
    they must be what that forward pass (the training one) computes for the sampled tokens."""
    from detoxrl.evaluation.generate import sample_tokens

    policy = lora_policy(tiny_dir)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])  # left-padded
    attn = (ids != 0).long()
    tokens, ended, logprobs, hidden = sample_tokens(policy.policy.get_base_model(), ids, attn, 2, 6, 0.7, top_p,
                                                    [-1], 0, torch.Generator().manual_seed(0), collect=True)
    assert tokens.shape == logprobs.shape == hidden.shape[:2] == (4, 6)
    full_ids = torch.cat([ids.repeat_interleave(2, 0), tokens], 1)
    mask = torch.ones_like(tokens)  # eos id -1: no row ends early, every position is scored
    assert not ended.any()
    with torch.no_grad():
        ref_lp, _, ref_values = policy(full_ids, torch.cat([attn.repeat_interleave(2, 0), mask], 1), 5, 0.7)
        values = policy.value_head(hidden).squeeze(-1)
    torch.testing.assert_close(logprobs, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
    assert (logprobs < 0).all()


def test_bf16_sampling_copy_carries_the_adapter(tmp_path):
    """merge_into writes base + LoRA delta into a bf16 copy (untying an adapted, tied LM head), so the
    copy's next-token distribution is the policy's up to bf16 rounding, and the policy is untouched."""
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_char_model(tmp_path / "tied", tie_word_embeddings=True)
    policy = lora_policy(model_dir)  # its adapter covers lm_head, which is tied to the embeddings
    lm = policy.policy.get_base_model()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = torch.log_softmax(lm(ids).logits.float(), -1)
        with policy.policy.disable_adapter():
            base_logp = torch.log_softmax(lm(ids).logits.float(), -1)
    sampler = AutoModelForCausalLM.from_pretrained(model_dir).to(torch.bfloat16)
    P.merge_into(policy.policy, sampler)
    with torch.no_grad():
        got = torch.log_softmax(sampler(ids).logits.float(), -1)
    assert (expected - base_logp).abs().max() > 0.05  # the adapter does change the model
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)
    # the copy's input embeddings stay the base model's (only its LM head was untied and adapted)
    torch.testing.assert_close(sampler.get_input_embeddings().weight.float(),
                               lm.get_input_embeddings().weight, atol=1e-2, rtol=1e-2)
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())


def test_bf16_run_trains_and_saves_an_fp32_policy(tiny_dir, prompts, tmp_path):
    from accelerate.state import AcceleratorState

    # accelerate fixes the precision once per process (the stage runs one PPO per process); the
    # tests before this one ran at fp32 in this process
    AcceleratorState._reset_state(True)
    try:
        final = run(tiny_dir, prompts, tmp_path, ppo_params(steps=2, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(True)
    assert math.isfinite(final["objective_kl"]) and math.isfinite(final["loss_total"])
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert saved.dtype == torch.float32


def test_several_samples_per_prompt(tiny_dir, prompts, tmp_path):
    seen = []

    class Recording(LetterReward):
        def score(self, prompts, responses):
            seen.append(list(prompts))
            return super().score(prompts, responses)

    run(tiny_dir, prompts, tmp_path, ppo_params(steps=2, samples_per_prompt=4), Recording())
    for batch in seen:  # 16 responses = 4 prompts x 4, each prompt's responses side by side
        assert len(batch) == 16 and len(set(batch)) <= 4
        assert all(batch[i] == batch[i - i % 4] for i in range(16))
    with pytest.raises(ValueError, match=r"batch_size \(16\) must be a multiple of samples_per_prompt \(3\)"):
        ppo_params(samples_per_prompt=3)


@pytest.mark.parametrize("cpu, precision", [("avx2", "none"), ("avx512_bf16", "bf16")])
def test_auto_precision_follows_the_cpu_and_is_recorded(tiny_dir, prompts, tmp_path, monkeypatch, capsys, cpu,
                                                        precision):
    """ppo.mixed_precision: auto on an AVX2-only CPU runs the fp32 path (no bf16 sampling copy, no autocast); on a
    CPU with AVX512-BF16 the bf16 path. The machine's capabilities are injected, not the test machine's."""
    from accelerate.state import AcceleratorState
    from test_hardware import AVX2_ZEN3, ZEN4

    from detoxrl import hardware

    caps = AVX2_ZEN3 if cpu == "avx2" else ZEN4
    monkeypatch.setattr(hardware, "detect", lambda device=None: caps)
    merges = []  # the bf16 sampling copy is refreshed (merge_into) before every rollout, on the bf16 path only
    real_merge = P.merge_into
    monkeypatch.setattr(P, "merge_into",
                        lambda policy, target: merges.append(target.dtype) or real_merge(policy, target))
    AcceleratorState._reset_state(True)
    try:
        final = run(tiny_dir, prompts, tmp_path, ppo_params(steps=1, mixed_precision="auto"))
    finally:
        AcceleratorState._reset_state(True)
    assert final["platform"]["precision"] == precision
    assert final["platform"]["cpu_kind"] == hardware.cpu_kind(caps)
    assert json.loads((tmp_path / "ppo.json").read_text())["platform"] == final["platform"]
    assert merges == ([torch.bfloat16] if precision == "bf16" else [])
    shown = "fp32" if precision == "none" else "bf16"
    assert f"ppo: precision {shown} (auto: " in capsys.readouterr().out
