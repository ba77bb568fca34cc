"""A CPU fast path for the fused LM head that TRL's SFT and DPO trainers put on the model.

TRL (>= 1.x) replaces the model's logits with per-token log-probabilities computed by `ChunkedLogProbFunction`:
the LM head runs in vocabulary tiles and is recomputed in backward, so the (tokens x vocab) logits never exist at
once. On a GPU it first drops the positions whose label is -100 (the prompt, under a completion-only loss). Off
Triton devices it keeps every position, so that XLA devices see fixed tile shapes; and the torch fallback of each
tile makes about a dozen passes over it (online log-sum-exp, entropy, top-1) in both directions. On a CPU that was
26% of an SFT step, spent mostly on prompt positions whose loss is masked anyway.

`install()` changes two things, for CPU tensors only (other devices keep TRL's code untouched):
- the compact path: only positions with a label are projected, as on a GPU;
- the per-token function: the logits of those positions are materialised once (log_softmax + gather, with
  autograd's own backward), instead of tiled and recomputed. Above `MAX_LOGITS` elements (a long batch) it falls
  back to TRL's tiled function, which bounds memory.
Outputs are TRL's: log-probs and entropy (both differentiable), log(sum p^2), the mean logit and whether the label
is the first argmax (tests/test_lm_head.py checks each, and the gradients, against TRL's function).
Measured by benchmarks/bench_train.py: SFT 121 -> 207 tokens/s on 2 cores, identical losses.
"""

from __future__ import annotations

import torch

# Above this many logits (fp32, 4 bytes each: 512 MiB) the tiled function is used instead.
MAX_LOGITS = 2**27


def _plain_log_probs(hidden, weight, bias, targets, temperature, logit_scale, softcap, outputs):
    z = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    log_p = z.log_softmax(-1)
    log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # TRL marks these three non-differentiable
        log_sum_sq = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # argmax: the first maximum
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def install() -> bool:
    """Patch TRL's fused LM head for CPU tensors (idempotent). False if this TRL lacks the hooks (nothing patched)."""
    try:
        import trl.trainer.utils as trl_utils

        tiled, use_triton = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    except (ImportError, AttributeError):
        return False
    if getattr(tiled, "detoxrl_cpu_path", False):
        return True

    class CPULogProb:
        """`ChunkedLogProbFunction.apply`'s signature; CPU tensors take the plain path."""

        detoxrl_cpu_path = True

        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                  logit_scale=1.0, outputs=("entropy",)):
            if hidden.device.type != "cpu" or hidden.shape[0] * weight.shape[0] > MAX_LOGITS:
                return tiled.apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping,
                                   logit_scale, outputs)
            return _plain_log_probs(hidden, weight, bias, targets, temperature, logit_scale,
                                    final_logit_softcapping, outputs)

    trl_utils._ChunkedLogProbFunction = CPULogProb
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)  # the compact path
    return True
