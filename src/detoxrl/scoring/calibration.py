"""Judge calibration: each judge's raw score mapped to the Perspective scale.

A calibrator is an isotonic (monotone, piecewise linear) fit of the Perspective toxicity of texts on a
judge's raw score for the same texts (the non-eval RTP texts the `train_judge` stage trains on), so the
calibrated score estimates the Perspective score. Then "toxicity >= 0.5" means the same for every
judge and the RTP metrics are comparable across judges. Calibrators are stored in
`<judges.trained_dir>/calibration.json` and apply only to the judge version they were fitted for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DetoxError

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibrator:
    judge: str
    version: str  # the judge version it was fitted for
    x: tuple[float, ...]  # raw-score knots (increasing)
    y: tuple[float, ...]  # Perspective-scale values at the knots (non-decreasing, in [0, 1])
    n_texts: int

    @classmethod
    def fit(cls, judge: str, version: str, raw, perspective) -> Calibrator:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(np.asarray(raw, dtype=float), np.asarray(perspective, dtype=float))
        return cls(judge, version, tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)),
                   len(raw))

    def __call__(self, raw) -> np.ndarray:
        """Calibrated scores; outside the fitted range, the end values (np.interp clips)."""
        return np.interp(np.asarray(raw, dtype=float), self.x, self.y)

    def to_dict(self) -> dict:
        return {"version": self.version, "n_texts": self.n_texts, "x": list(self.x), "y": list(self.y)}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def save_calibrations(path: str | Path, calibrators: dict[str, Calibrator]) -> None:
    from ..io import write_json

    write_json(path, {name: c.to_dict() for name, c in calibrators.items()})


def load_calibrations(trained_dir: str | Path) -> dict[str, Calibrator]:
    """judge name -> calibrator; empty when the directory (train_judge's output) does not exist."""
    path = Path(trained_dir) / CALIBRATION_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {name: Calibrator(name, d["version"], tuple(d["x"]), tuple(d["y"]), int(d["n_texts"]))
                for name, d in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DetoxError(f"{path}: not a calibration file ({type(exc).__name__}: {exc}); rerun train_judge") from None


def to_perspective_scale(judge, raw, calibrators: dict[str, Calibrator]) -> tuple[np.ndarray, bool]:
    """(scores on the Perspective scale, True) where a calibrator for this judge version exists (or the
    judge is calibrated already, like the ensemble), else (the raw scores, False)."""
    raw = np.asarray(raw, dtype=float)
    if getattr(judge, "on_perspective_scale", False):
        return raw, True
    cal = calibrators.get(judge.name)
    if cal is not None and cal.version == judge.version:
        return cal(raw), True
    return raw, False


def reliability(pred, perspective, bins: int = 10) -> tuple[list[dict], float]:
    """Reliability curve over equal-width score bins: mean score vs mean Perspective score per bin,
    and the expected calibration error (mean |difference| weighted by bin size)."""
    pred, perspective = np.asarray(pred, dtype=float), np.asarray(perspective, dtype=float)
    which = np.clip((pred * bins).astype(int), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        mp, mt = float(pred[sel].mean()), float(perspective[sel].mean())
        curve.append({"bin_low": b / bins, "bin_high": (b + 1) / bins, "n": int(sel.sum()),
                      "mean_score": mp, "mean_perspective": mt})
        ece += sel.sum() * abs(mp - mt)
    return curve, float(ece / max(len(pred), 1))
