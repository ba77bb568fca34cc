"""Model cards: one small JSON file, in one schema, for every model or filtered output a stage makes.

A training (or filter) stage writes `metrics/cards/<name>.json` beside its model: `<name>` is the model's name
in the report (`sft`, `ppo/s1` for seed 1 of the seeded method `ppo`). The report reads the cards of the
`models:`, `seeded:` and `filters:` entries and knows no method by name: a new method is its stage (writing a
card) plus one line in params.yaml.

Schema (every key always present):

  name              the model's name in the report ("ppo/s1")
  method            the algorithm that made it: base, sft, dpo, ppo, grpo, rloo, filter, ...
  seed              the training (or sampling) seed; null where nothing random was drawn
  init              the model it started from (a directory or a source such as packaged:smollm2-135m-instruct)
  data              the training data it read (paths)
  signal            what its training signal is, in words ("composite: 1*toxicity + 0.25*RM", "HH-RLHF human labels")
  judges            toxicity judges inside that signal (inherited from the init model's card and the labels' card)
  reward_models     reward models inside that signal
  budget            training_samples (int), sample_unit (str: "rollouts", "pairs", ...), scored_responses (int:
                    responses a judge or RM scored to make the signal), inference_samples (int: extra samples drawn
                    at every use, a filter's), seconds (float: wall time of the stages that made it)
  notes             anything else a reader needs ("CVaR alpha 1 -> 0.4"), or ""
  platform          hardware.platform_record of where it ran (null for a model nothing trained)

A data card (`metrics/cards/data/<name>.json`) has the same schema with `method` the labelling stage: the
feedback stages write one for their labelled pairs, and a DPO run on them adds its judges and budget to its own
(`compose`).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import DetoxError
from .io import write_json

CARDS_DIR = Path("metrics/cards")
BUDGET_KEYS = {"training_samples": int, "sample_unit": str, "scored_responses": int, "inference_samples": int,
               "seconds": (int, float)}
KEYS = ("name", "method", "seed", "init", "data", "signal", "judges", "reward_models", "budget", "notes", "platform")


def card_path(name: str, cards_dir: str | Path = CARDS_DIR) -> Path:
    return Path(cards_dir) / f"{name}.json"


def make_card(name: str, method: str, *, seed: int | None, init: str, data: list[str], signal: str,
              judges: list[str] = (), reward_models: list[str] = (), training_samples: int = 0,
              sample_unit: str = "", scored_responses: int = 0, inference_samples: int = 0, seconds: float = 0.0,
              notes: str = "", platform: dict | None = None) -> dict:
    card = {"name": name, "method": method, "seed": seed, "init": str(init), "data": [str(d) for d in data],
            "signal": signal, "judges": sorted(set(judges)), "reward_models": sorted(set(map(str, reward_models))),
            "budget": {"training_samples": int(training_samples), "sample_unit": sample_unit,
                       "scored_responses": int(scored_responses), "inference_samples": int(inference_samples),
                       "seconds": round(float(seconds), 1)},
            "notes": notes, "platform": platform}
    check(card, f"card {name!r}")
    return card


def compose(card: dict, *upstream: dict) -> dict:
    """`card` with the judges and reward models of the `upstream` cards (its labels', its init model's) added to
    its signal, and the budgets of the upstream *data* cards (scored responses, seconds) added to its budget: the
    judges that graded a model's labels are inside its training signal, and grading them was part of its cost."""
    out = {**card, "budget": dict(card["budget"])}
    for up in upstream:
        out["judges"] = sorted(set(out["judges"]) | set(up["judges"]))
        out["reward_models"] = sorted(set(out["reward_models"]) | set(up["reward_models"]))
        if up["name"].startswith("data/"):
            for key in ("scored_responses", "seconds"):
                out["budget"][key] = round(out["budget"][key] + up["budget"][key], 1)
    return out


def write_card(card: dict, cards_dir: str | Path = CARDS_DIR) -> Path:
    path = card_path(card["name"], cards_dir)
    write_json(path, card)
    return path


def check(card: dict, where: str) -> None:
    """One clear error naming the card and the key when a card does not follow the schema."""
    if not isinstance(card, dict):
        raise DetoxError(f"{where}: a card is a JSON object, got {type(card).__name__}")
    missing = [k for k in KEYS if k not in card]
    if missing:
        raise DetoxError(f"{where}: missing key(s) {', '.join(missing)}")
    budget = card["budget"]
    if not isinstance(budget, dict):
        raise DetoxError(f"{where}: budget must be an object")
    for key, kind in BUDGET_KEYS.items():
        if not isinstance(budget.get(key), kind) or isinstance(budget.get(key), bool):
            raise DetoxError(f"{where}: budget.{key} must be {getattr(kind, '__name__', 'a number')}, "
                             f"got {budget.get(key)!r}")
    for key in ("judges", "reward_models", "data"):
        if not isinstance(card[key], list):
            raise DetoxError(f"{where}: {key} must be a list, got {card[key]!r}")


def read_card(name: str, cards_dir: str | Path = CARDS_DIR) -> dict:
    path = card_path(name, cards_dir)
    if not path.exists():
        raise DetoxError(f"{path}: no model card for {name!r} (the stage that makes {name!r} writes it: "
                         "run `dvc repro`)")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DetoxError(f"{path}: not valid JSON ({exc.msg})") from None
    check(card, str(path))
    return card
