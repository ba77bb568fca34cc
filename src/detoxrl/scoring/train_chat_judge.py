"""The `train_chat_judge` stage: the chat_distilled judge, trained on ToxicChat's human toxicity labels.

The distilled judge's recipe (a logistic regression on the packaged MiniLM encoder's embeddings beside hashed
tf-idf character n-grams) on the user inputs of data/chat/judge_train.jsonl, labelled toxic by the human majority.
Cross-validation folds are drawn over distinct texts (a repeated input stays in one fold): the out-of-fold
predictions give the held-out AUROC and AUPRC in metrics/chat_judge_train.json and the judge's calibration, an
isotonic map from its raw score to the human-label rate (so 0.5 means "even odds a human calls it toxic"),
stored with the judge. The final classifier is fitted on every training text. `validate_judges` then measures it,
beside every other judge, on the held-out ToxicChat inputs it never saw, and against Perspective on RTP.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import DetoxError, hardware
from ..io import atomic_dir, read_jsonl, write_json
from ..params import TrainChatJudgeParams
from .calibration import CALIBRATION_FILE, Calibrator, save_calibrations
from .distilled import DistilledJudge, char_ngram_counts, fit_idf, forward, layers_from_sklearn, save_judge
from .distilled import features as make_features


def label_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC and AUPRC (average precision) of scores against binary labels, and the positive rate (AUPRC's
    chance level)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return {"auroc": None, "auprc": None, "positive_rate": float(labels.mean()), "n": int(len(labels))}
    return {"auroc": float(roc_auc_score(labels, scores)), "auprc": float(average_precision_score(labels, scores)),
            "positive_rate": float(labels.mean()), "n": int(len(labels))}


def train_chat_judge(train_path: str | Path, out_dir: str | Path, metrics_path: str | Path,
                     p: TrainChatJudgeParams, profiles: list[str] | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression

    from .encoder import load_encoder

    start = time.monotonic()
    records = read_jsonl(train_path)
    if p.max_texts is not None and p.max_texts < len(records):
        keep = np.random.default_rng(p.seed).choice(len(records), p.max_texts, replace=False)
        records = [records[i] for i in sorted(keep)]
    texts = [r["text"] for r in records]
    labels = np.array([bool(r["toxic"]) for r in records])
    if labels.sum() < p.cv_folds or (~labels).sum() < p.cv_folds:
        raise DetoxError(f"train_chat_judge: {train_path} has {int(labels.sum())} toxic and {int((~labels).sum())} "
                         f"non-toxic inputs; need at least train_chat_judge.cv_folds = {p.cv_folds} of each")
    ngrams = p.char_ngrams.model_dump() if p.char_ngrams else None
    encoder = load_encoder(p.encoder, p.max_length, p.batch_size)
    idf = fit_idf(char_ngram_counts(texts, ngrams)) if ngrams else None  # no labels used: folds stay held-out
    x = make_features(encoder.encode(texts), texts, ngrams, idf)

    rng = np.random.default_rng(p.seed)
    distinct = list(dict.fromkeys(t.strip() for t in texts))
    fold_of_text = dict(zip(rng.permutation(len(distinct)).tolist(), np.arange(len(distinct)) % p.cv_folds))
    index = {t: i for i, t in enumerate(distinct)}
    folds = np.array([fold_of_text[index[t.strip()]] for t in texts])
    classifier = lambda: LogisticRegression(C=p.C, max_iter=p.max_iter)  # noqa: E731
    oof = np.zeros(len(texts))
    for f in range(p.cv_folds):
        test = folds == f
        oof[test] = forward(layers_from_sklearn(classifier().fit(x[~test], labels[~test])), x[test])
    final = layers_from_sklearn(classifier().fit(x, labels))

    meta = {"encoder": p.encoder, "encoder_version": encoder.version, "max_length": p.max_length,
            "char_ngrams": ngrams, "classifier": "logistic", "label": "ToxicChat human majority: toxic",
            "trained_on": {"texts": len(texts), "toxic_texts": int(labels.sum())}}
    with atomic_dir(out_dir) as tmp:
        save_judge(tmp, meta, final, idf)
        judge = DistilledJudge(tmp, p.batch_size, "chat_distilled", "train_chat_judge")
        calibrator = Calibrator.fit("chat_distilled", judge.version, oof, labels.astype(float))
        save_calibrations(tmp / CALIBRATION_FILE, {"chat_distilled": calibrator})
    metrics = {
        "data": {"texts": len(texts), "distinct_texts": len(distinct), "toxic": int(labels.sum())},
        "encoder": encoder.version, "char_ngrams": ngrams, "version": judge.version,
        "heldout": {"method": f"{p.cv_folds}-fold cross-validation over distinct texts",
                    **label_metrics(labels, oof)},
        "calibration": {"target": "human toxic rate", "knots": len(calibrator.x)},
        "seconds": round(time.monotonic() - start, 1),
        "platform": hardware.platform_record(hardware.detect(), profiles=profiles),
    }
    write_json(metrics_path, metrics)
    return metrics
