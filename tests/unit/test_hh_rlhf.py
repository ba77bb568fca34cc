import gzip
import json

import pytest

from detoxrl.data.hh_rlhf import Pair, ParseError, parse_dialogue, to_pair


def test_parse_real_record(raw_dir):
    with gzip.open(raw_dir / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        record = json.loads(fh.readline())
    pair = to_pair(record)
    assert isinstance(pair, Pair)
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert pair.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert pair.prompt[1]["content"] == "Are you looking for practical joke ideas?"
    assert pair.chosen.startswith("No, sorry!  All of these involve a pen")
    assert pair.rejected.startswith("There are lots of funny things you can do with pens")


def test_parse_multiline_turns_and_missing_space():
    msgs = parse_dialogue("\n\nHuman: hi\nthere\n\nAssistant:hello\n\nHuman: bye\n\nAssistant: ok")
    assert msgs == [
        {"role": "user", "content": "hi\nthere"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ok"},
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("preamble\n\nHuman: hi\n\nAssistant: yo", "text before the first"),
        ("\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b", "turn 3 is assistant"),
        ("\n\nHuman: hi\n\nAssistant: a\n\nHuman: more", "does not end with an Assistant"),
        ("no turns at all", "text before the first"),
        ("", "no 'Human:'/'Assistant:' turns"),
        (None, "not a string"),
    ],
)
def test_parse_malformed(text, message):
    with pytest.raises(ParseError, match=message):
        parse_dialogue(text)


def _dlg(*turns):
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"chosen": _dlg("q", "a"), "rejected": _dlg("q", "a")}, "identical"),
        ({"chosen": _dlg("q", ""), "rejected": _dlg("q", "b")}, "empty"),
        ({"chosen": _dlg("q", "a"), "rejected": _dlg("other", "b")}, "prefix_mismatch"),
        ({"chosen": _dlg("q", "a", "q2"), "rejected": _dlg("q", "b")}, "unparsable"),
        ({"chosen": _dlg("q", "a")}, "unparsable"),
    ],
)
def test_drop_reasons(record, reason):
    assert to_pair(record) == reason


def test_pair_keeps_shared_prefix():
    pair = to_pair({"chosen": _dlg("q", "a1", "q2", "good"), "rejected": _dlg("q", "a1", "q2", "bad")})
    assert pair == Pair(
        prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}],
        chosen="good", rejected="bad",
    )
