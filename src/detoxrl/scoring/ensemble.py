"""The ensemble judge: the mean of its members' calibrated (Perspective-scale) scores."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .. import DetoxError
from .cache import ScoreCache, score_texts
from .calibration import load_calibrations


class EnsembleJudge:
    """toxicity = mean over `judges.ensemble.members` of each member's calibrated score (which is
    also returned under the member's name). Members' raw scores go through the score cache."""

    name = "ensemble"
    on_perspective_scale = True  # already calibrated: evaluation uses its scores as they are

    def __init__(self, params):
        from . import make_judge

        members = params.ensemble.members
        calibrations = load_calibrations(params.trained_dir)
        self.members, self.calibrators = [], []
        for name in members:
            judge = make_judge(name, params)
            cal = calibrations.get(name)
            if cal is None or cal.version != judge.version:
                found = "none" if cal is None else f"one for version {cal.version}"
                raise DetoxError(
                    f"ensemble judge: member {name!r} (version {judge.version}) has no calibration in "
                    f"{params.trained_dir}/calibration.json ({found}); add it to train_judge.calibrate and rerun "
                    "train_judge")
            self.members.append(judge)
            self.calibrators.append(cal)
        key = [(j.name, j.version, c.digest) for j, c in zip(self.members, self.calibrators)]
        self.version = "sha256:" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        self._cache = ScoreCache(params.cache_dir)

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        cols = {}
        for judge, cal in zip(self.members, self.calibrators):
            cols[judge.name] = cal([s["toxicity"] for s in score_texts(judge, texts, self._cache)])
        mean = np.mean(list(cols.values()), axis=0)
        return [{"toxicity": float(mean[i]), **{n: float(v[i]) for n, v in cols.items()}} for i in range(len(texts))]
