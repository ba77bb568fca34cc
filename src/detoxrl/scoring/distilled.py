"""The perspective_distilled judge: a small classifier on sentence embeddings, trained (stage
`train_judge`) on the Perspective labels of RTP texts that are not eval prompts.

Features: the encoder's sentence embedding and, with `train_judge.char_ngrams`, hashed tf-idf
character n-grams of the text beside it (toxicity is often a matter of spelling, which a sentence
embedding blurs). The hashing needs no vocabulary; only the n-grams' idf weights are stored.

The saved judge (`models/judge`) is small and needs no training data: `judge.json` (encoder, n-gram
settings, classifier kind, training summary) and `classifier.npz` (the weights, scored here in numpy:
a logistic regression is one layer, an MLP two; and the idf vector). The encoder is loaded from its
source (offline for the packaged one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import DetoxError

JUDGE_FILE, WEIGHTS_FILE = "judge.json", "classifier.npz"


def char_ngram_counts(texts: list[str], cfg: dict):
    """Sparse (n, n_features) counts of hashed, lower-cased character n-grams within word boundaries."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=tuple(cfg["range"]), n_features=cfg["n_features"],
                             alternate_sign=False, norm=None).transform(texts)


def fit_idf(counts) -> np.ndarray:
    """Smoothed idf of each hashed n-gram over the training texts: log((1 + n) / (1 + df)) + 1."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return np.log((1 + counts.shape[0]) / (1 + df)) + 1.0


def features(embeddings: np.ndarray, texts: list[str], cfg: dict | None, idf: np.ndarray | None):
    """The classifier's input: embeddings alone, or [l2-normalised sublinear tf-idf n-grams, weight x embeddings]."""
    if not cfg:
        return embeddings
    from scipy import sparse
    from sklearn.preprocessing import normalize

    tf = char_ngram_counts(texts, cfg).astype(np.float64)
    tf.data = 1.0 + np.log(tf.data)
    lexical = normalize(tf.multiply(idf).tocsr())
    return sparse.hstack([lexical, sparse.csr_matrix(embeddings * cfg["embedding_weight"])]).tocsr()


def layers_from_sklearn(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W, b), ...] of a fitted LogisticRegression (one layer) or MLPClassifier (ReLU hidden layers)."""
    if hasattr(model, "coefs_"):
        return [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in zip(model.coefs_, model.intercepts_)]
    return [(np.asarray(model.coef_, np.float64).T, np.asarray(model.intercept_, np.float64))]


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """P(toxic) for each row of x: ReLU between layers, a sigmoid on the last one's single output."""
    h = x.astype(np.float64) if hasattr(x, "tocsr") else np.asarray(x, np.float64)  # sparse stays sparse
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return 1.0 / (1.0 + np.exp(-h[:, 0]))


def judge_version(meta: dict, layers: list[tuple[np.ndarray, np.ndarray]], idf: np.ndarray | None = None) -> str:
    """Hash of the judge's description and weights: a retrained judge gets a new score-cache key."""
    digest = hashlib.sha256(json.dumps({k: meta.get(k) for k in ("encoder", "encoder_version", "max_length",
                                                                  "classifier", "char_ngrams")},
                                       sort_keys=True).encode())
    for a in [x for wb in layers for x in wb] + ([] if idf is None else [idf]):
        digest.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def save_judge(out_dir: Path, meta: dict, layers: list[tuple[np.ndarray, np.ndarray]],
               idf: np.ndarray | None = None) -> None:
    from ..io import write_json

    # float32 on disk (the n-gram layer has n_features rows); the version hashes what is stored
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]
    idf = None if idf is None else idf.astype(np.float32)
    arrays = {f"{kind}{i}": a for i, (w, b) in enumerate(layers) for kind, a in (("W", w), ("b", b))}
    np.savez(out_dir / WEIGHTS_FILE, **arrays, **({} if idf is None else {"idf": idf}))
    write_json(out_dir / JUDGE_FILE, {**meta, "version": judge_version(meta, layers, idf)})


class DistilledJudge:
    """toxicity = the classifier's P(toxic): Perspective toxicity >= the label threshold (perspective_distilled,
    trained by train_judge) or the human majority label of ToxicChat (chat_distilled, train_chat_judge)."""

    def __init__(self, judge_dir: str | Path, batch_size: int = 64, name: str = "perspective_distilled",
                 stage: str = "train_judge"):
        judge_dir, self.name = Path(judge_dir), name
        if not (judge_dir / JUDGE_FILE).exists() or not (judge_dir / WEIGHTS_FILE).exists():
            raise DetoxError(f"{name} judge: {judge_dir} holds no trained judge (run `dvc repro {stage}`)")
        try:
            self.meta = json.loads((judge_dir / JUDGE_FILE).read_text(encoding="utf-8"))
            with np.load(judge_dir / WEIGHTS_FILE) as z:
                self.layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(sum(f.startswith("W") for f in z.files))]
                self.idf = z["idf"] if "idf" in z.files else None
            if self.meta.get("char_ngrams") and self.idf is None:
                raise ValueError("n-gram features without their idf weights")
            self.version = judge_version(self.meta, self.layers, self.idf)
        except (ValueError, KeyError, OSError) as exc:
            raise DetoxError(f"{name} judge: {judge_dir} is not a saved judge ({exc}); rerun {stage}") from None
        self.stage = stage
        self.batch_size = batch_size
        self._encoder = None  # loaded on the first call: cached scores need no encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import load_encoder

            self._encoder = load_encoder(self.meta["encoder"], self.meta["max_length"], self.batch_size)
            if self._encoder.version != self.meta["encoder_version"]:
                raise DetoxError(f"{self.name} judge: trained on encoder {self.meta['encoder_version']} "
                                 f"but {self._encoder.version} is installed; rerun {self.stage}")
        return self._encoder

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        texts = list(texts)
        x = features(self.encoder.encode(texts), texts, self.meta.get("char_ngrams"), self.idf)
        return [{"toxicity": float(p)} for p in forward(self.layers, x)]
