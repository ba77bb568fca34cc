"""Anthropic HH-RLHF dialogues -> chat messages and preference pairs.

A raw record is {"chosen": str, "rejected": str}; each string is a whole dialogue whose turns start
with "\\n\\nHuman: " or "\\n\\nAssistant: ". Both dialogues share every turn but the last Assistant
turn: that shared prefix is the prompt, the two last turns are the responses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


class ParseError(ValueError):
    """A dialogue that cannot be turned into alternating user/assistant messages."""


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """Split one HH dialogue into chat messages [{"role": "user"|"assistant", "content": str}]."""
    if not isinstance(text, str):
        raise ParseError(f"dialogue is {type(text).__name__}, not a string")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ParseError("text before the first 'Human:' turn")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _ROLE[speaker], "content": content.strip()})
    if not messages:
        raise ParseError("no 'Human:'/'Assistant:' turns")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ParseError(f"turn {i + 1} is {message['role']}, expected {expected} (turns must alternate)")
    if messages[-1]["role"] != "assistant":
        raise ParseError("dialogue does not end with an Assistant turn")
    return messages


@dataclass(frozen=True)
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


# Reasons a raw record is dropped; counted in metrics/data.json.
DROP_REASONS = ("unparsable", "prefix_mismatch", "empty", "identical")


def to_pair(record: dict) -> Pair | str:
    """A raw HH record -> Pair, or the name of the reason it is dropped (one of DROP_REASONS)."""
    try:
        chosen = parse_dialogue(record.get("chosen"))
        rejected = parse_dialogue(record.get("rejected"))
    except ParseError:
        return "unparsable"
    if chosen[:-1] != rejected[:-1]:
        return "prefix_mismatch"
    c, r = chosen[-1]["content"], rejected[-1]["content"]
    if not c or not r:
        return "empty"
    if c == r:
        return "identical"
    return Pair(prompt=chosen[:-1], chosen=c, rejected=r)
