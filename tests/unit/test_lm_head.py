"""The CPU path for TRL's fused LM head gives TRL's own outputs and gradients, on the positions TRL scores."""

from __future__ import annotations

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from detoxrl.training import lm_head

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _inputs(n=12, hidden=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g) * 0.5
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0] = (h[0].detach() @ w.T).argmax()  # at least one top-1 hit
    return h, w, targets


@pytest.mark.parametrize("temperature,softcap,scale", [(1.0, None, 1.0), (0.7, 5.0, 0.5)])
def test_plain_path_matches_trl_chunked_function(temperature, softcap, scale):
    h1, w, targets = _inputs()
    h2 = h1.detach().clone().requires_grad_(True)
    ref = ChunkedLogProbFunction.apply(h1, w, None, targets, temperature, 16, softcap, scale, OUTPUTS)
    ours = lm_head._plain_log_probs(h2, w, None, targets, temperature, scale, softcap, OUTPUTS)
    for name, a, b in zip(("log_probs", "entropy", "log_sum_sq", "mean_logits"), ref[:4], ours[:4]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    assert torch.equal(ours[4], ref[4]) and ours[4][0]
    # gradients through both differentiable outputs
    g = torch.Generator().manual_seed(1)
    gl, ge = torch.randn(len(targets), generator=g), torch.randn(len(targets), generator=g)
    ((ref[0] * gl).sum() + (ref[1] * ge).sum()).backward()
    ((ours[0] * gl).sum() + (ours[1] * ge).sum()).backward()
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-5)


def test_install_scores_only_labelled_positions_with_the_same_loss(tmp_path, monkeypatch):
    """Through TRL's patched forward on a real tiny model: same loss and log-probs, prompt positions skipped."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob
    from trl.trainer.utils import add_fused_lm_head

    from tiny import build_tiny_char_model

    # TRL's own code for "before", even if an earlier test in this process installed the CPU path
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", ChunkedLogProbFunction)
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    model = AutoModelForCausalLM.from_pretrained(build_tiny_char_model(tmp_path / "tiny"))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :6] = -100  # a masked prompt
    before = model(input_ids=ids, labels=labels, fused_lm_head=True)

    assert lm_head.install() and lm_head.install()  # idempotent
    seen = []
    real = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        staticmethod(lambda h, *a: seen.append(h.shape[0]) or real(h, *a)))
    after = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert seen == [2 * 4]  # (10 - 6) labelled next-token positions per row, not 2 x 9
    torch.testing.assert_close(after.loss, before.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.log_probs, before.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.entropy, before.entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(after.is_top1, before.is_top1)


def test_large_batches_fall_back_to_the_tiled_function(monkeypatch):
    lm_head.install()
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(lm_head, "MAX_LOGITS", 10)
    h, w, targets = _inputs()
    out = trl_utils._ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, 16, None, 1.0, OUTPUTS)
    ref = ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, 16, None, 1.0, OUTPUTS)
    torch.testing.assert_close(out[0], ref[0])
    assert out[0].grad_fn is not None and "ChunkedLogProb" in type(out[0].grad_fn).__name__
