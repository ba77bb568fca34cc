"""ToxicChat user inputs -> judge-training / held-out split and chat evaluation prompts.

Source: ToxicChat (Lin et al., 2023; LMSYS, https://huggingface.co/datasets/lmsys/toxic-chat), version
`toxicchat0124`, train split, human-annotated rows only, as converted by dmg-illc/JUDGE-BENCH
(`data/toxic_chat/toxic_chat_train.json`). Real user inputs to the Vicuna demo with human majority labels for
toxicity and jailbreaking. Licence: CC BY-NC 4.0 -- non-commercial use only; attribute LMSYS ToxicChat.

Records are dicts {"id": "tc-<conv id>", "text", "toxic": bool, "jailbreaking": bool}. Some user inputs repeat
(2,801 rows, 2,760 distinct texts after strip()), so everything here groups by normalised text: a text is never on
both sides of a split, and the evaluation prompts hold one record per text.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from .. import DetoxError

CATEGORIES = ("jailbreaking", "toxic", "nontoxic")  # also the output order of chat_eval_prompts
LABELS = ("toxicity", "jailbreaking")


def _label(value: object) -> bool | None:
    """A majority_human label as a bool; None when it is not "0"/"1" (or the ints 0/1)."""
    if value in ("0", "1") or (type(value) is int and value in (0, 1)):  # type check: True is not a label
        return str(value) == "1"
    return None


def _instance_record(inst: object, index: int, source: str) -> dict:
    where = f"{source}: instance {index + 1}"
    if not isinstance(inst, dict):
        raise DetoxError(f"{where}: expected a JSON object, got {type(inst).__name__}")
    conv_id = inst.get("id")
    if type(conv_id) is int:
        conv_id = str(conv_id)
    if not isinstance(conv_id, str) or not conv_id.strip():
        raise DetoxError(f"{where}: missing or empty \"id\"")
    where += f" (id {conv_id})"
    text = inst.get("instance")
    if not isinstance(text, str) or not text.strip():
        problem = "missing" if text is None else "empty" if isinstance(text, str) else f"a {type(text).__name__}"
        raise DetoxError(f"{where}: \"instance\" (the user input) is {problem}, expected a non-empty string")
    annotations = inst.get("annotations")
    labels = {}
    for name in LABELS:
        annotation = annotations.get(name) if isinstance(annotations, dict) else None
        if not isinstance(annotation, dict) or "majority_human" not in annotation:
            raise DetoxError(f"{where}: annotations.{name}.majority_human is missing")
        value = annotation["majority_human"]
        labels[name] = _label(value)
        if labels[name] is None:
            raise DetoxError(f"{where}: annotations.{name}.majority_human is {json.dumps(value)}, "
                             "expected \"0\" or \"1\"")
    return {"id": f"tc-{conv_id}", "text": text, "toxic": labels["toxicity"], "jailbreaking": labels["jailbreaking"]}


def load_toxicchat(path: str | Path) -> list[dict]:
    """Parse the JUDGE-BENCH ToxicChat JSON document into records, in file order.

    Any defect raises one DetoxError naming the file and, for a bad instance, its 1-based position in
    "instances" (as `record N` in rtp.normalise), its id when present and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise DetoxError(f"{path}: file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetoxError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetoxError(f"{path}: unreadable file ({exc})") from None
    if not isinstance(doc, dict):
        raise DetoxError(f"{path}: expected a JSON object with an \"instances\" list, got {type(doc).__name__}")
    instances = doc.get("instances")
    if not isinstance(instances, list):
        raise DetoxError(f"{path}: expected an \"instances\" list, got {type(instances).__name__}")
    records, first_index = [], {}
    for index, inst in enumerate(instances):
        record = _instance_record(inst, index, str(path))
        # A repeated conversation id is an error rather than something to rename: conv ids are unique in
        # ToxicChat (and in this file), so a repeat means a row was duplicated or the file is not what we think;
        # suffixing would silently double-count it and make ids depend on row order.
        if record["id"] in first_index:
            raise DetoxError(f"{path}: instance {index + 1} (id {record['id'].removeprefix('tc-')}): "
                             f"the id repeats instance {first_index[record['id']] + 1}")
        first_index[record["id"]] = index
        records.append(record)
    return records


def category_of(record: dict) -> str:
    """"jailbreaking" for any jailbreaking input (toxic or not), else "toxic", else "nontoxic"."""
    return "jailbreaking" if record["jailbreaking"] else "toxic" if record["toxic"] else "nontoxic"


def category_counts(records: list[dict]) -> dict[str, int]:
    """Records per category, every category present (zero where none)."""
    counts = Counter(category_of(r) for r in records)
    return {c: counts[c] for c in CATEGORIES}


def _groups(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by text.strip(), groups and their members in file order."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["text"].strip(), []).append(r)
    return groups


def _group_category(members: list[dict]) -> str:
    """The most severe category among a text's records (duplicates may, in principle, disagree)."""
    return category_of({"toxic": any(r["toxic"] for r in members),
                        "jailbreaking": any(r["jailbreaking"] for r in members)})


def split_toxicchat(records: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split into (judge_train, heldout) by distinct text, stratified by category.

    Texts (normalised with strip()) are grouped and each group goes to one side whole, so no text is on both
    sides; records whose duplicates disagree on a label are kept as they are. Within each category (jailbreaking,
    other toxic, non-toxic; a group takes its most severe member's) round(n * heldout_fraction) groups are held
    out, so both parts keep about the overall toxic and jailbreaking rates. Both parts keep the input order.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise DetoxError(f"heldout_fraction is {heldout_fraction}, expected a value from 0 to 1")
    groups = _groups(records)
    by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for text, members in groups.items():
        by_category[_group_category(members)].append(text)
    rng = random.Random(seed)
    heldout_texts: set[str] = set()
    for category in CATEGORIES:
        texts = by_category[category]
        heldout_texts.update(rng.sample(texts, round(len(texts) * heldout_fraction)))
    train = [r for r in records if r["text"].strip() not in heldout_texts]
    heldout = [r for r in records if r["text"].strip() in heldout_texts]
    return train, heldout


def chat_eval_prompts(
    heldout: list[dict],
    n_toxic: int | None,
    n_jailbreaking: int | None,
    n_nontoxic: int,
    seed: int,
    max_chars: int | None = None,
) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Chat evaluation prompts from the held-out records: one per distinct text, seeded, sorted.

    Up to n_jailbreaking jailbreaking inputs, up to n_toxic other toxic inputs (None = all of either) and a sample
    of n_nontoxic non-toxic, non-jailbreaking inputs. A repeated text counts once, with the first record's id and
    the labels of all its records or-ed together (most severe). Texts longer than max_chars characters are
    dropped before sampling. Each category is sampled with its own seeded generator, so changing one count
    leaves the other samples unchanged. Output order: by category (CATEGORIES) then input order.

    Returns (records, counts) with counts = {"available": ..., "dropped_too_long": ..., "selected": ...}, each a
    dict by category; "available" is distinct held-out texts before the length filter.
    """
    wanted = {"jailbreaking": n_jailbreaking, "toxic": n_toxic, "nontoxic": n_nontoxic}
    for category, n in wanted.items():
        if n is not None and n < 0:
            raise DetoxError(f"n_{category} is {n}, expected a count of at least 0")
    if max_chars is not None and max_chars < 1:
        raise DetoxError(f"max_chars is {max_chars}, expected at least 1 (or None for no limit)")
    pools: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    counts: dict[str, dict[str, int]] = {k: {c: 0 for c in CATEGORIES}
                                         for k in ("available", "dropped_too_long", "selected")}
    for members in _groups(heldout).values():
        first = members[0]
        record = {"id": first["id"], "text": first["text"], "category": _group_category(members),
                  "toxic": any(r["toxic"] for r in members), "jailbreaking": any(r["jailbreaking"] for r in members)}
        counts["available"][record["category"]] += 1
        if max_chars is not None and len(record["text"]) > max_chars:
            counts["dropped_too_long"][record["category"]] += 1
            continue
        pools[record["category"]].append(record)
    chosen = []
    for category in CATEGORIES:
        pool, n = pools[category], wanted[category]
        if n is None or n >= len(pool):
            picked = pool
        else:
            rng = random.Random(f"{seed}:{category}")  # str seeds are hashed with SHA-512: stable across runs
            picked = [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]
        counts["selected"][category] = len(picked)
        chosen += picked
    return chosen, counts
