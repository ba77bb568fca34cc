"""The `validate_judges` stage: how well each toxicity judge agrees with Perspective.

On the held-out eval prompts, both the prompt texts and their original continuations carry
Perspective API scores. For each judge: AUROC at Perspective toxicity >= threshold, and Spearman
rank correlation with the Perspective score. A judge that cannot run here (no network, no key) is
reported as skipped, with the reason.

Each judge's scores are also mapped to the Perspective scale where `train_judge` calibrated it;
reliability curves (mean calibrated score vs mean Perspective score per score bin, and raw where
calibrated) go to plots/judge_calibration.csv and .png, with the expected calibration error in the
metrics.

On chat text, every judge is also measured against human labels: the held-out ToxicChat user inputs
(data/chat/heldout.jsonl; none of them trained the chat_distilled judge), AUROC and AUPRC (average precision;
its chance level is the toxic rate, reported beside it) with percentile-bootstrap CIs over inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json
from ..scoring import ScoreCache, make_judge, score_texts
from ..scoring.calibration import load_calibrations, reliability, to_perspective_scale
from ..scoring.train_chat_judge import label_metrics

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def reference_texts(prompts: list[dict]) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for r in prompts:
        for text, scores in ((r["text"], r["prompt_scores"]), (r["continuation"], r["continuation_scores"])):
            if text and scores.get("toxicity") is not None:
                texts.append(text)
                labels.append(scores["toxicity"])
    return texts, np.array(labels, dtype=float)


def agreement(pred: np.ndarray, perspective: np.ndarray, threshold: float) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    positive = perspective >= threshold
    return {
        "auroc": float(roc_auc_score(positive, pred)) if 0 < positive.sum() < len(positive) else None,
        "spearman": float(spearmanr(pred, perspective).statistic),
        "n_texts": int(len(pred)),
        "n_toxic": int(positive.sum()),
    }


def human_label_agreement(pred: np.ndarray, labels: np.ndarray, n_samples: int, level: float, seed: int) -> dict:
    """AUROC/AUPRC against binary human labels, each with a percentile bootstrap CI over the texts."""
    point = label_metrics(labels, pred)
    if point["auroc"] is None:
        return point
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_samples):
        idx = rng.integers(0, len(pred), len(pred))
        m = label_metrics(labels[idx], pred[idx])
        if m["auroc"] is not None:
            boots.append((m["auroc"], m["auprc"]))
    lo, hi = np.quantile(np.array(boots), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {**point, "auroc_ci": [float(lo[0]), float(hi[0])], "auprc_ci": [float(lo[1]), float(hi[1])]}


def validate_judges(prompts_path: str | Path, metrics_path: str | Path, params: Params,
                    plots_dir: str | Path | None = None, chat_heldout_path: str | Path | None = None) -> dict:
    texts, perspective = reference_texts(read_jsonl(prompts_path))
    cache = ScoreCache(params.judges.cache_dir)
    calibrations = load_calibrations(params.judges.trained_dir)
    curves: dict[str, dict[str, list[dict]]] = {}
    result: dict = {"reference": "Perspective API toxicity of eval prompt and continuation texts",
                    "threshold": params.evaluate.toxic_threshold, "judges": {}}
    for name in params.validate_judges.judges:
        try:
            judge = make_judge(name, params.judges)
            pred = np.array([s["toxicity"] for s in score_texts(judge, texts, cache)])
        except DetoxError as exc:
            result["judges"][name] = {"skipped": str(exc)}
            continue
        scaled, calibrated = to_perspective_scale(judge, pred, calibrations)
        curve, ece = reliability(scaled, perspective)
        curves[name] = {"calibrated" if calibrated else "raw": curve}
        entry = {"version": judge.version, **agreement(pred, perspective, params.evaluate.toxic_threshold),
                 "calibrated": calibrated, "calibration_error": ece}
        if calibrated and judge.name in calibrations:  # a judge with its own raw scale: that curve too
            curves[name]["raw"], entry["calibration_error_raw"] = reliability(pred, perspective)
        result["judges"][name] = entry
    if chat_heldout_path is not None:
        chat = read_jsonl(chat_heldout_path)
        cap = params.validate_judges.max_chat_inputs
        if cap is not None and cap < len(chat):
            chat = [chat[i] for i in sorted(np.random.default_rng(0).choice(len(chat), cap, replace=False))]
        chat_texts, human = [r["text"] for r in chat], np.array([bool(r["toxic"]) for r in chat])
        ev = params.evaluate
        result["toxicchat"] = {"reference": f"ToxicChat human majority labels of {len(chat)} held-out user inputs "
                                            f"({chat_heldout_path})", "judges": {}}
        for name in params.validate_judges.judges:
            if "skipped" in result["judges"][name]:
                result["toxicchat"]["judges"][name] = result["judges"][name]
                continue
            judge = make_judge(name, params.judges)
            pred = np.array([s["toxicity"] for s in score_texts(judge, chat_texts, cache)])
            result["toxicchat"]["judges"][name] = human_label_agreement(pred, human, min(ev.bootstrap_samples, 500),
                                                                        ev.ci_level, ev.seed)
    if plots_dir is not None:
        _reliability_plots(curves, Path(plots_dir))
    # results reproduce exactly on one CPU kind; `profiles`: the profile chain params.yaml was made with
    result["platform"] = hardware.platform_record(hardware.detect(), profiles=params.profiles)
    write_json(metrics_path, result)
    return result


def _reliability_plots(curves: dict[str, dict[str, list[dict]]], plots_dir: Path) -> None:
    """plots/judge_calibration.csv (one row per judge, scale and bin) and a PNG of the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_file

    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(plots_dir / "judge_calibration.csv") as fh:
        fh.write("judge,scale,bin_low,bin_high,n,mean_score,mean_perspective\n")
        for name, by_scale in curves.items():
            for scale, curve in by_scale.items():
                for b in curve:
                    fh.write(f"{name},{scale},{b['bin_low']:.2f},{b['bin_high']:.2f},{b['n']},"
                             f"{b['mean_score']:.6f},{b['mean_perspective']:.6f}\n")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for i, (name, by_scale) in enumerate(curves.items()):
        for scale, curve in by_scale.items():
            ax.plot([b["mean_score"] for b in curve], [b["mean_perspective"] for b in curve], marker="o", markersize=3,
                    color=f"C{i}", linestyle="-" if scale == "calibrated" else "--", label=f"{name} ({scale})")
    ax.set_xlabel("judge score (mean per bin)")
    ax.set_ylabel("Perspective toxicity (mean per bin)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Judge reliability on held-out eval texts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(plots_dir / "judge_calibration.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
