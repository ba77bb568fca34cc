"""The Detoxify judge: BERT-family classifiers trained on the Jigsaw toxicity data sets."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version
from pathlib import Path

from .. import DetoxError
from ..params import DetoxifyParams


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class DetoxifyJudge:
    """toxicity and Detoxify's category scores (severe_toxicity, obscene, threat, insult, ...).

    `params.model` is a released model name (weights download from GitHub on first use, into
    torch's hub cache, and the base model's config and tokenizer from the Hugging Face hub), or a
    local Detoxify checkpoint: a torch file with "config" and "state_dict", whose
    config.arch.args.model_type (the HF config and tokenizer) must load offline, i.e. be a local
    directory or already be in the Hugging Face cache.
    """

    name = "detoxify"

    def __init__(self, params: DetoxifyParams):
        try:
            import torch
            from detoxify import Detoxify
            from detoxify.detoxify import MODEL_URLS
        except ImportError:
            raise DetoxError("detoxify judge: the detoxify package is not installed (pip install detoxify)") from None
        self.batch_size = params.batch_size
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, pkg = params.model, f"detoxify=={version('detoxify')}"
        if model in MODEL_URLS:
            self.version = f"{pkg}:{model}"
            no_weights = DetoxError(
                f"detoxify judge: cannot download the {model!r} weights (no network?); pass a local "
                "checkpoint path in judges.detoxify.model or pick another judge"
            )
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(MODEL_URLS[model])
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} and not cached.exists():
                raise no_weights  # offline and not cached: fail before trying the network
            try:
                self._model = Detoxify(model_type=model, device=device)
            except OSError:  # urllib's URLError, and the hub's errors for the config/tokenizer
                raise no_weights from None
        else:
            path = Path(model)
            if not path.is_file():
                raise DetoxError(
                    f"detoxify judge: judges.detoxify.model {model!r} is neither one of "
                    f"{', '.join(MODEL_URLS)} nor an existing checkpoint file"
                )
            self.version = f"{pkg}:sha256:{_file_sha256(path)[:16]}"
            try:
                self._model = Detoxify(checkpoint=str(path), device=device)
            except Exception as exc:  # a checkpoint can fail to load in many ways; all are the user's to fix
                raise DetoxError(f"detoxify judge: cannot load checkpoint {path} ({_one_line(exc)})") from None
        if "toxicity" not in self._model.class_names:
            raise DetoxError(
                f"detoxify judge: the model has no toxicity class (it has {', '.join(self._model.class_names)})"
            )

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i : i + self.batch_size]
            # predict() gives {class: [score per text]}, or {class: score} for a single text
            cols = {k: v if isinstance(v, list) else [v] for k, v in self._model.predict(batch).items()}
            out.extend({k: float(v[j]) for k, v in cols.items()} for j in range(len(batch)))
        return out
