"""Model cards from IPFS: every text rule with its own code, refusals that never echo the
bad characters, mixed-script names flagged but ordinary ones not, and a property: any
JSON-like card is either refused with a known code or safe to store and show."""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from marketplace.indexer.cards import (
    CARD_SCHEMA,
    FLAGS,
    MAX_CARD_BYTES,
    REFUSAL_CODES,
    Card,
    parse_card,
)


def refusal(raw: bytes, max_bytes: int = MAX_CARD_BYTES) -> tuple[str, str]:
    """The refusal's (status, error), checked to be storable and safe to show."""
    card = parse_card(raw, max_bytes=max_bytes)
    assert card.status in REFUSAL_CODES, card
    assert card.error is not None and 0 < len(card.error) <= 300
    assert card.error.isprintable(), card.error  # no control, bidi, surrogate...
    assert card.data is None and card.flags == ()
    return card.status, card.error


def accepted(raw: bytes, max_bytes: int = MAX_CARD_BYTES) -> dict[str, Any]:
    """The accepted card's stored data (flags are checked apart)."""
    card = parse_card(raw, max_bytes=max_bytes)
    assert card.status == "ok" and card.error is None and card.data is not None, card
    return card.data


def card_bytes(card: Any) -> bytes:
    """JSON with every non-ASCII character escaped, lone surrogates included."""
    return json.dumps(card).encode()


# ------------------------------------------------------------------------ basics


def test_codes_fit_the_card_status_column() -> None:
    assert all(len(code) <= 16 for code in REFUSAL_CODES)
    jsonschema.Draft202012Validator.check_schema(CARD_SCHEMA)


def test_ordinary_card_is_normalised() -> None:
    raw = card_bytes(
        {
            "name": "  Cafe\u0301 classifier ",
            "description": "Line one.\n\tLine two\r\n",
            "license": " MIT ",
            "tags": [" vision ", "re\u0301sumé"],
            "signature": {"inputs": [{"name": "x", "shape": [1, 3]}]},
            "sha256": "0" * 64,
            "extra": {"kept": True},
        }
    )
    assert parse_card(raw) == Card(
        "ok",
        data={
            "name": "Café classifier",
            "description": "Line one.\n\tLine two\r\n",
            "license": "MIT",
            "tags": ["vision", "résumé"],
            "signature": {"inputs": [{"name": "x", "shape": [1, 3]}]},
            "sha256": "0" * 64,
            "extra": {"kept": True},
        },
    )


def test_too_large_invalid_json_and_schema() -> None:
    assert accepted(b'{"name": "x"}', max_bytes=13) == {"name": "x"}
    assert refusal(b'{"name": "xy"}', max_bytes=13)[0] == "too_large"
    assert refusal(b"\x00" * (MAX_CARD_BYTES + 1))[0] == "too_large"
    for raw in (b"{", b'{"name": NaN}', b"\xef\xbb\xbf{}", b"[1,]"):
        assert refusal(raw)[0] == "invalid_json"
    wrong: list[Any] = [{"name": 5}, {"name": "x", "tags": [""]}, {"description": "x"}, []]
    for card in wrong:
        assert refusal(card_bytes(card))[0] == "invalid_card"


def test_lengths_apply_to_the_normalised_text() -> None:
    """Stripping or NFC can shorten or lengthen a field; the database columns hold that."""
    status, error = refusal(card_bytes({"name": " \u3000 "}))
    assert status == "invalid_card" and "at name" in error
    # U+0958 is one character, but two in NFC: 150 of them do not fit String(200)
    status, error = refusal(card_bytes({"name": "\u0958" * 150}))
    assert status == "invalid_card"
    assert "maxLength is 200 (it has 300 characters)" in error


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    """jsonschema's messages repr() the value: 1000 levels used to raise RecursionError."""
    for raw in (
        b"[" * 1000 + b"]" * 1000,
        b'{"name": "x", "signature": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"name": "x", "signature": {"a": ' + b'{"a": ' * 500 + b"1" + b"}" * 501 + b"}",
    ):
        status, error = refusal(raw)
        assert status == "invalid_card" and "levels deep" in error
    accepted(b'{"name": "x", "signature": {"a": [[[[1]]]]}}')


def test_errors_given_by_the_indexer_are_made_safe_too() -> None:
    card = Card("unavailable", "no such CID: bafy\x00\u202e" + "x" * 400)
    assert card.error is not None and len(card.error) == 300 and card.error.isprintable()
    assert card.error.startswith("no such CID: bafyU+0000U+202Exxx") and card.error[-1] == "…"


# ---------------------------------------------------------------- control chars


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"name": "a\\u0000b"}', "the card's name has a control character U+0000 at"),
        (b'{"name": "x", "tags": ["ok", "t\\u0000"]}', "the card's tags[1] has"),
        (
            b'{"name": "x", "signature": {"inputs": [{"na\\u0000me": "x"}]}}',
            'the key "naU+0000me" in the card\'s signature.inputs[0] has',
        ),
        (b'{"name": "x", "description": "a\\u0000"}', "the card's description has"),
        (b'{"name": "x", "signature": {"a": "\\u0000"}}', "the card's signature.a has"),
        (b'{"\\u0000": 1, "name": "x"}', 'the key "U+0000" in the card has'),
        # raw, not escaped: bad JSON to orjson, still named as a control character
        (b'{"name": "a\x00b"}', "the card's name has a control character U+0000"),
        (b'{"name": "x", "license": "\x1b[31m"}', "the card's license has"),
        (b'{"name": "x", "signature": {"a": {"b\x00": 1}}}', 'the key "bU+0000" in the card'),
    ],
)
def test_nul_anywhere(raw: bytes, where: str) -> None:
    status, error = refusal(raw)
    assert status == "control_chars"
    assert where in error
    assert "\x00" not in error


@pytest.mark.parametrize(
    "card",
    [
        {"name": "a\u0085b"},  # NEL
        {"name": "x", "description": "\u009b31m red"},  # C1 CSI
        {"name": "x", "tags": ["del\u007f"]},
        {"name": "x\ufffe"},
        {"name": "x", "description": "\U0010ffff"},
        {"name": "x", "signature": {"k": "\ufdd0"}},
        {"name": "a\tb"},  # tabs and line breaks only in the description
        {"name": "x", "tags": ["a\nb"]},
        {"name": "x", "license": "MIT\r"},
        {"name": "x", "signature": {"a\nb": 1}},
        {"name": "x", "sha256": "0" * 64 + "\n"},  # "$" in the schema's pattern allows it
        {"name": "a\u2028b"},
    ],
)
def test_control_characters(card: dict[str, Any]) -> None:
    assert refusal(card_bytes(card))[0] == "control_chars"


def test_line_breaks_allowed_in_the_description() -> None:
    data = accepted(card_bytes({"name": "x", "description": "a\tb\nc\r\nd\u2028e"}))
    assert data["description"] == "a\tb\nc\r\nd\u2028e"


# -------------------------------------------------------------- invalid unicode


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"name": "a\\ud800"}', "the card's name has a lone surrogate U+D800 at character 1"),
        (b'{"name": "x", "tags": ["\\udfff"]}', "the card's tags[0] has a lone surrogate"),
        (b'{"name": "x", "signature": {"\\udc00": 1}}', 'the key "U+DC00" in the card'),
        (b'{"name": "x", "description": "\\ud83d\\u0041"}', "description has a lone surrogate"),
        (b'{"name": "\xed\xa0\x80"}', "not valid UTF-8: byte 0xED at offset 10"),  # CESU-8
        (b'{"name": "\xff"}', "not valid UTF-8: byte 0xFF at offset 10"),
        (b'{"name": "\xc0\x80"}', "not valid UTF-8"),  # overlong NUL
    ],
)
def test_lone_surrogates_and_bad_utf8(raw: bytes, where: str) -> None:
    status, error = refusal(raw)
    assert status == "invalid_unicode"
    assert where in error


def test_surrogate_pairs_are_fine() -> None:
    assert accepted(b'{"name": "\\ud83d\\ude00 model"}') == {"name": "\U0001f600 model"}


# ------------------------------------------------------------- invisible chars


@pytest.mark.parametrize(
    ("card", "where"),
    [
        ({"name": "safe\u202etxt.exe"}, "the card's name has a bidirectional control U+202E"),
        ({"name": "x", "description": "a\u202eb"}, "the card's description has a bidi"),
        ({"name": "x", "description": "\u2067rtl\u2069"}, "the card's description"),
        ({"name": "x", "license": "\u202dMIT"}, "the card's license"),
        ({"name": "x", "signature": {"k\u202a": 1}}, 'the key "kU+202A" in the card'),
        (
            {"name": "x", "tags": ["a\u200db"]},
            "the card's tags[0] has an invisible character U+200D",
        ),
        ({"name": "pay\u200bpal"}, "an invisible character U+200B"),
        ({"name": "pay\u00adpal"}, "U+00AD"),
        ({"name": "x\u2060"}, "U+2060"),
        ({"name": "\ufeffx"}, "U+FEFF"),
        ({"name": "x", "tags": ["\u3164"]}, "U+3164"),  # Hangul filler: a blank "name"
        ({"name": "a\U000e0041b"}, "U+E0041"),  # tag characters smuggle ASCII
        ({"name": "a\ufe00b"}, "U+FE00"),  # a variation selector after a letter
        ({"name": "\u200fx"}, "a bidirectional mark U+200F"),
    ],
)
def test_invisible_and_bidi_characters(card: dict[str, Any], where: str) -> None:
    status, error = refusal(card_bytes(card))
    assert status == "invisible_chars"
    assert where in error


def test_invisible_characters_allowed_outside_name_and_tags() -> None:
    description = (
        "\U0001f468\u200d\U0001f469 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 a\u200fb"
    )
    card = {"name": "I \u2764\ufe0f ONNX", "description": description, "tags": ["\u2b50\ufe0f"]}
    # emoji presentation (U+FE0F) after a symbol is kept in the name and tags
    assert accepted(card_bytes(card)) == card


def test_every_format_character_is_refused_in_a_name() -> None:
    for point in range(0x110000):
        char = chr(point)
        if unicodedata.category(char) == "Cf":
            assert refusal(card_bytes({"name": f"a{char}b"}))[0] == "invisible_chars", point


# ------------------------------------------------------------------ confusables


@pytest.mark.parametrize(
    ("card", "flags"),
    [
        ({"name": "p\u0430ypal"}, ("name_mixed_scripts",)),  # a Cyrillic a
        ({"name": "\u0391lask\u0430"}, ("name_mixed_scripts",)),  # Greek alpha, Cyrillic a
        ({"name": "\u0405\u0435n\u0455\u0435 v2"}, ("name_mixed_scripts",)),
        ({"name": "x", "tags": ["vision", "g\u043e\u043egle"]}, ("tags_mixed_scripts",)),
        (
            {"name": "\u03c1aypal", "tags": ["p\u0430y"]},
            ("name_mixed_scripts", "tags_mixed_scripts"),
        ),
    ],
)
def test_mixed_scripts_in_a_word_are_flagged(card: dict[str, Any], flags: tuple[str, ...]) -> None:
    assert parse_card(card_bytes(card)) == Card("ok", None, card, flags)


@pytest.mark.parametrize(
    "name",
    [
        "ИИ модель v2",
        "画像分類器",
        "Ελληνικά",
        "GPT-2 Ελληνικά",
        "画像分類モデル",  # Han with katakana is one writing system
        "日本語BERT",
        "BERTモデル",
        "한국어 BERT 모델",
        "ResNet-50 для изображений",
        "β-VAE",
        "Arabic العربية v2",
        "हिन्दी मॉडल",
        "Café naïve",
    ],
)
def test_ordinary_names_are_not_flagged(name: str) -> None:
    card = {"name": name, "tags": name.split()}
    assert parse_card(card_bytes(card)) == Card("ok", None, card, ())


# ------------------------------------------------------------------------- cost


def test_a_64_kib_card_is_quick() -> None:
    """Linear: the slowest shapes measured (~30 ms) with a wide margin for busy CI."""
    description = ("Классификация изображений, 画像分類\n" * 1000)[:20_000]
    for card in (
        {"name": "x", "description": description, "signature": {"a": ["ab"] * 4000}},
        {"name": "x", "signature": {"a": [[]] * 21000}},
        {"name": "x", "tags": [1] * 30000},
    ):
        raw = orjson.dumps(card)
        assert len(raw) <= MAX_CARD_BYTES
        started = time.perf_counter()
        parse_card(raw)
        assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------- property

ODD_CHARACTERS = (
    "\x00\t\n\r\x1b\x7f\x85\x9b\u00ad\u034f\u061c\u200b\u200c\u200d\u200e\u202a\u202e"
    "\u2028\u2066\u2069\u2800\u3164\ufe00\ufe0f\ufeff\ufffe\uffff\ud800\udbff\udc00\udfff"
    "\U0001fffe\U000e0041\U000e0100 \u00a0a\u0430\u0301\u03bf\u2764"
)
ordinary = st.characters(categories=("L", "M", "N", "P", "S", "Zs"))
ordinary_texts = st.text(ordinary, max_size=8)
hostile_texts = st.text(
    # every category (Cc, Cf, Cs, Co, Cn, Zl, Zp...) and the characters the rules name
    st.one_of(ordinary, st.characters(exclude_categories=()), st.sampled_from(ODD_CHARACTERS)),
    max_size=8,
)
# mostly ordinary strings, so that a card with several strings still passes at times
texts = st.one_of(ordinary_texts, ordinary_texts, ordinary_texts, hostile_texts)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)
card_like = st.one_of(
    st.fixed_dictionaries(
        {"name": texts},
        optional={
            "description": texts,
            "license": texts,
            "tags": st.lists(texts, max_size=4),
            "signature": st.dictionaries(texts, json_values, max_size=4),
            "sha256": st.just("0" * 64) | texts,
        },
    ),
    json_values,
)


def strings_in(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every (path, string) in a parsed card, keys (path ending in "key") included."""
    if isinstance(value, str):
        return [(path, value)]
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += [((*path, key, "key"), key), *strings_in(item, (*path, key))]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += strings_in(item, (*path, index))
    return found


@settings(max_examples=400, deadline=None)
@given(card_like, st.booleans())
@example({"name": "a\x00"}, True)
@example({"name": "a\ud800"}, True)
@example({"name": "a\ud800"}, False)
@example({"name": "x", "signature": {"\u202e": [1]}}, True)
def test_any_card_is_refused_with_a_code_or_safe(card: Any, escape: bool) -> None:
    # escaped: lone surrogates as "\ud800"; raw: as the CESU-8 bytes a lax encoder writes
    raw = json.dumps(card, ensure_ascii=escape).encode("utf-8", "surrogatepass")
    parsed = parse_card(raw)
    event(parsed.status)
    if parsed.status != "ok":
        refusal(raw)  # a known code, a short printable message, no data
        return
    assert parsed.data is not None and parsed.error is None
    for path, text in strings_in(parsed.data):
        text.encode("utf-8")  # no lone surrogate
        is_description = path == ("description",)
        is_label = path == ("name",) or (len(path) == 2 and path[0] == "tags")
        for char in text:
            category = unicodedata.category(char)
            assert char not in "\x00\ufffe\uffff"
            if category == "Cc":
                assert is_description and char in "\t\n\r", (path, text)
            assert not "\u202a" <= char <= "\u202e" and not "\u2066" <= char <= "\u2069"
            if is_label:
                assert category not in ("Cf", "Zl", "Zp"), (path, text)
    assert orjson.loads(orjson.dumps(parsed.data)) == parsed.data
    name = parsed.data["name"]
    assert name == unicodedata.normalize("NFC", name).strip() != ""
    assert set(parsed.flags) <= set(FLAGS)
