"""The `train_judge` stage: the perspective_distilled judge, and every judge's calibration.

Training texts are the prompt and original continuation texts of the RealToxicityPrompts records
that are not eval prompts (a record sharing its prompt or continuation text with an eval prompt is
left out, and so is any single text that equals an eval text), labelled by their Perspective
toxicity. Features: a sentence encoder's embeddings, with hashed tf-idf character n-grams beside them
(`char_ngrams`); on top, a logistic regression (or, embeddings only, a small MLP) predicting Perspective
toxicity >= `label_threshold`.

k-fold cross-validation over records (a prompt and its continuation stay in one fold) gives the
held-out AUROC/Spearman in metrics/judge_train.json and out-of-fold predictions, on which the
judge's isotonic calibration is fitted; the saved classifier is then fitted on all texts. The other
judges in `calibrate` are calibrated on the same texts (they were not trained on them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..data.rtp import normalise
from ..io import atomic_dir, read_jsonl, write_json
from .cache import ScoreCache, score_texts
from .calibration import CALIBRATION_FILE, Calibrator, save_calibrations
from .distilled import DistilledJudge, char_ngram_counts, fit_idf, forward, layers_from_sklearn, save_judge
from .distilled import features as make_features

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params

RTP_FILES = ("challenging", "nontoxic")


def training_texts(rtp_dir: str | Path, eval_prompts: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(texts, Perspective toxicity, record index of each text, counts) from the non-eval RTP records."""
    eval_prompt_texts = {r["text"].strip() for r in eval_prompts}
    eval_cont_texts = {(r.get("continuation") or "").strip() for r in eval_prompts} - {""}
    eval_texts = eval_prompt_texts | eval_cont_texts
    texts, labels, groups, seen = [], [], [], set()
    counts = {"records": 0, "excluded_eval_records": 0, "excluded_eval_texts": 0, "unscored_texts": 0,
              "duplicate_texts": 0}
    for subset in RTP_FILES:
        path = Path(rtp_dir) / f"{subset}.jsonl"
        for i, raw in enumerate(read_jsonl(path)):
            r = normalise(raw, subset, i, str(path))
            counts["records"] += 1
            if r["text"].strip() in eval_prompt_texts or r["continuation"].strip() in eval_cont_texts:
                counts["excluded_eval_records"] += 1
                continue
            for text, scores in ((r["text"], r["prompt_scores"]), (r["continuation"], r["continuation_scores"])):
                key = text.strip()
                if not key:
                    continue
                if key in eval_texts:  # e.g. a continuation that is another eval prompt's text
                    counts["excluded_eval_texts"] += 1
                elif scores.get("toxicity") is None:
                    counts["unscored_texts"] += 1
                elif key in seen:
                    counts["duplicate_texts"] += 1
                else:
                    seen.add(key)
                    texts.append(text)
                    labels.append(float(scores["toxicity"]))
                    groups.append(counts["records"] - 1)
    return texts, np.array(labels), np.array(groups), counts


def _classifier(p):
    if p.classifier == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=p.C, max_iter=p.max_iter)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(p.mlp_hidden,), max_iter=p.max_iter, random_state=p.seed)


def _agreement(pred, perspective, threshold) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    pos = perspective >= threshold
    return {"auroc": float(roc_auc_score(pos, pred)) if 0 < pos.sum() < len(pos) else None,
            "spearman": float(spearmanr(pred, perspective).statistic)}


def train_judge(rtp_dir: str | Path, eval_prompts_path: str | Path, out_dir: str | Path,
                metrics_path: str | Path, params: Params) -> dict:
    from .encoder import load_encoder

    p, start = params.train_judge, time.monotonic()
    texts, perspective, groups, counts = training_texts(rtp_dir, read_jsonl(eval_prompts_path))
    rng = np.random.default_rng(p.seed)
    records = np.unique(groups)
    if p.max_records is not None and p.max_records < len(records):
        keep = np.isin(groups, rng.choice(records, p.max_records, replace=False))
        texts = [t for t, k in zip(texts, keep) if k]
        perspective, groups = perspective[keep], groups[keep]
        records = np.unique(groups)
    labels = perspective >= p.label_threshold
    if labels.sum() < p.cv_folds or (~labels).sum() < p.cv_folds:
        raise DetoxError(f"train_judge: {len(texts)} training texts have {int(labels.sum())} toxic ones (Perspective "
                         f">= {p.label_threshold}); need at least train_judge.cv_folds = {p.cv_folds} of each class")

    ngrams = p.char_ngrams.model_dump() if p.char_ngrams else None
    if ngrams and p.classifier == "mlp":
        raise DetoxError("train_judge: classifier mlp with char_ngrams would need a hidden layer per hashed n-gram "
                         "bucket; use classifier: logistic, or char_ngrams: null")
    encoder = load_encoder(p.encoder, p.max_length, p.batch_size)
    # idf from all training texts: it uses no labels, so the cross-validated numbers below stay held-out ones
    idf = fit_idf(char_ngram_counts(texts, ngrams)) if ngrams else None
    features = make_features(encoder.encode(texts), texts, ngrams, idf)
    encode_s = time.monotonic() - start

    # Out-of-fold predictions: folds are drawn over records, so a prompt and its continuation share one.
    fold_of_record = dict(zip(rng.permutation(records).tolist(), np.arange(len(records)) % p.cv_folds))
    folds = np.array([fold_of_record[g] for g in groups.tolist()])
    oof = np.zeros(len(texts))
    for f in range(p.cv_folds):
        test = folds == f
        model = _classifier(p).fit(features[~test], labels[~test])
        oof[test] = forward(layers_from_sklearn(model), features[test])
    final = layers_from_sklearn(_classifier(p).fit(features, labels))

    meta = {"encoder": p.encoder, "encoder_version": encoder.version, "max_length": p.max_length,
            "char_ngrams": ngrams, "classifier": p.classifier, "label_threshold": p.label_threshold,
            "trained_on": {"texts": len(texts), "toxic_texts": int(labels.sum()), "records": int(len(records))}}
    metrics: dict = {
        "data": {**counts, "training_records": int(len(records)), "texts": len(texts),
                 "toxic_texts": int(labels.sum())},
        "encoder": encoder.version,
        "char_ngrams": ngrams,
        "classifier": p.classifier,
        "heldout": {"method": f"{p.cv_folds}-fold cross-validation over records",
                    **_agreement(oof, perspective, p.label_threshold)},
        "calibration": {},
    }
    with atomic_dir(out_dir) as tmp:
        save_judge(tmp, meta, final, idf)
        judge = DistilledJudge(tmp, p.batch_size)
        calibrators = {}
        cache = ScoreCache(params.judges.cache_dir)
        for name in p.calibrate:
            if name == "perspective_distilled":
                raw = oof  # out-of-fold: the judge's scores on texts it was not fitted on
            elif name == "ensemble":
                metrics["calibration"][name] = {"skipped": "the ensemble averages calibrated scores already"}
                continue
            else:
                from . import make_judge

                try:
                    other = make_judge(name, params.judges)
                    raw = np.array([s["toxicity"] for s in score_texts(other, texts, cache)])
                except DetoxError as exc:
                    metrics["calibration"][name] = {"skipped": str(exc)}
                    continue
            version = judge.version if name == "perspective_distilled" else other.version
            calibrators[name] = c = Calibrator.fit(name, version, raw, perspective)
            metrics["calibration"][name] = {"version": version, "n_texts": len(raw), "knots": len(c.x)}
        save_calibrations(tmp / CALIBRATION_FILE, calibrators)
    metrics["seconds"] = {"encode": round(encode_s, 1), "total": round(time.monotonic() - start, 1)}
    # results reproduce exactly on one CPU kind; `profiles`: the profile chain params.yaml was made with
    metrics["platform"] = hardware.platform_record(hardware.detect(), profiles=params.profiles)
    write_json(metrics_path, metrics)
    return metrics
