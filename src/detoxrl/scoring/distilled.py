"""The perspective_distilled judge: a small classifier on sentence embeddings, trained (stage
`train_judge`) on the Perspective labels of RTP texts that are not eval prompts.

The saved judge (`models/judge`) is small and needs no training data: `judge.json` (encoder, classifier
kind, training summary) and `classifier.npz` (the weights, scored here in numpy: a logistic regression
is one layer, an MLP two). The encoder is loaded from its source (offline for the packaged one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import DetoxError

JUDGE_FILE, WEIGHTS_FILE = "judge.json", "classifier.npz"


def layers_from_sklearn(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W, b), ...] of a fitted LogisticRegression (one layer) or MLPClassifier (ReLU hidden layers)."""
    if hasattr(model, "coefs_"):
        return [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in zip(model.coefs_, model.intercepts_)]
    return [(np.asarray(model.coef_, np.float64).T, np.asarray(model.intercept_, np.float64))]


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """P(toxic) for each row of x: ReLU between layers, a sigmoid on the last one's single output."""
    h = np.asarray(x, np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return 1.0 / (1.0 + np.exp(-h[:, 0]))


def judge_version(meta: dict, layers: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """Hash of the judge's description and weights: a retrained judge gets a new score-cache key."""
    digest = hashlib.sha256(json.dumps({k: meta[k] for k in ("encoder", "encoder_version", "max_length",
                                                              "classifier")}, sort_keys=True).encode())
    for w, b in layers:
        digest.update(np.ascontiguousarray(w).tobytes())
        digest.update(np.ascontiguousarray(b).tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def save_judge(out_dir: Path, meta: dict, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from ..io import write_json

    arrays = {f"{kind}{i}": a for i, (w, b) in enumerate(layers) for kind, a in (("W", w), ("b", b))}
    np.savez(out_dir / WEIGHTS_FILE, **arrays)
    write_json(out_dir / JUDGE_FILE, {**meta, "version": judge_version(meta, layers)})


class DistilledJudge:
    """toxicity = the classifier's P(Perspective toxicity >= label threshold); no category scores."""

    name = "perspective_distilled"

    def __init__(self, judge_dir: str | Path, batch_size: int = 64):
        judge_dir = Path(judge_dir)
        if not (judge_dir / JUDGE_FILE).exists() or not (judge_dir / WEIGHTS_FILE).exists():
            raise DetoxError(f"perspective_distilled judge: {judge_dir} holds no trained judge "
                             "(run `dvc repro train_judge`)")
        try:
            self.meta = json.loads((judge_dir / JUDGE_FILE).read_text(encoding="utf-8"))
            with np.load(judge_dir / WEIGHTS_FILE) as z:
                self.layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(len(z.files) // 2)]
            self.version = judge_version(self.meta, self.layers)
        except (ValueError, KeyError, OSError) as exc:
            raise DetoxError(f"perspective_distilled judge: {judge_dir} is not a saved judge ({exc}); "
                             "rerun train_judge") from None
        self.batch_size = batch_size
        self._encoder = None  # loaded on the first call: cached scores need no encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import load_encoder

            self._encoder = load_encoder(self.meta["encoder"], self.meta["max_length"], self.batch_size)
            if self._encoder.version != self.meta["encoder_version"]:
                raise DetoxError(f"perspective_distilled judge: trained on encoder {self.meta['encoder_version']} "
                                 f"but {self._encoder.version} is installed; rerun train_judge")
        return self._encoder

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        return [{"toxicity": float(p)} for p in forward(self.layers, self.encoder.encode(list(texts)))]
