"""Model cards: the JSON a seller puts on IPFS next to a model, parsed into text that is
safe to store in SQLite or PostgreSQL, print in a terminal and show on a web page.

The card format (`CARD_SCHEMA`) is an object; only `name` is required:

- `name`: the listing's title, 1-200 characters (after normalisation).
- `description`: free text, up to 20,000 characters; the one field where tabs and line
  breaks are allowed.
- `license`: a licence name or SPDX id, up to 100 characters.
- `tags`: up to 32 labels of 1-50 characters each.
- `signature`: an object describing the model's inputs and outputs; any JSON inside, its
  keys and strings held to the same text rules as everything else.
- `sha256`: the ONNX file's SHA-256, 64 lowercase hex digits.

Other keys are kept as they are. `parse_card` never raises: it returns a `Card` whose
`status` (the listing's `card_status`) is "ok" or one of `REFUSAL_CODES` (each at most 16
characters), with a message in `error` that names the field and shows any offending
character as U+XXXX:

- `too_large`: over `max_bytes`.
- `invalid_unicode`: not UTF-8, or a lone surrogate (a `"\\ud800"` escape with no pair).
- `invalid_json`: not JSON (orjson's reading: no NaN, no BOM, at most 1024 levels deep).
- `control_chars`: anywhere, a C0 control, DEL, a C1 control or a Unicode noncharacter
  (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF); tab, CR, LF, U+2028 and U+2029 are line breaks and
  allowed only in `description`. PostgreSQL cannot store NUL at all.
- `invisible_chars`: anywhere, a bidi embedding, override or isolate (U+202A-U+202E,
  U+2066-U+2069), which reorders the text shown around it; in `name` and `tags`, also bidi
  marks, every format character (Unicode category Cf: zero-width space and joiners, soft
  hyphen, word joiner, BOM, tag characters, ...) and the other default-ignorable or blank
  characters (Hangul fillers, U+034F, U+2800, variation selectors except U+FE0E/U+FE0F
  right after a symbol, as in an emoji).
- `invalid_card`: does not fit `CARD_SCHEMA` once normalised, or nests deeper than
  `MAX_DEPTH`.

Every key and string is checked, at any depth. Stored text is normalised: `name`,
`description`, `license` and `tags` to NFC, and `name`, `license` and `tags` without
surrounding whitespace; the schema's lengths apply to that normalised text, which is what
the database columns hold. Keys and `signature` are left as sent: they must match the
model's tensor names byte for byte.

A card is never refused for mixing scripts, but a `name` or tag with a word that mixes
writing systems where one letter can pass for another ("paypal" spelt with a Cyrillic
U+0430 for its first "a") is flagged (`name_mixed_scripts`, `tags_mixed_scripts`) so the
storefront can warn.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson
from confusable_homoglyphs import categories, confusables  # type: ignore[import-untyped]

MAX_CARD_BYTES = 64 * 1024
MAX_ERROR_CHARS = 300  # what `card_error` shows
# Far more than a signature needs; deeper JSON makes repr() and the stdlib json module (so
# jsonschema's messages, SQLAlchemy's JSON columns) hit Python's recursion limit.
MAX_DEPTH = 32

REFUSAL_CODES = (
    "too_large",
    "invalid_unicode",
    "invalid_json",
    "control_chars",
    "invisible_chars",
    "invalid_card",
)
FLAGS = ("name_mixed_scripts", "tags_mixed_scripts")

CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string", "maxLength": 20_000},
        "license": {"type": "string", "maxLength": 100},
        "tags": {
            "type": "array",
            "maxItems": 32,
            "items": {"type": "string", "minLength": 1, "maxLength": 50},
        },
        "signature": {"type": "object"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(CARD_SCHEMA)


@dataclass(frozen=True)
class Card:
    """What the indexer stores for a listing's card: `status` ("ok", one of
    `REFUSAL_CODES`, or the indexer's own such as "unavailable"), `error` (why not, at
    most 300 printable characters), `data` (the normalised card, when "ok") and `flags`
    (warnings for the storefront, from `FLAGS`)."""

    status: str
    error: str | None = None
    data: dict[str, Any] | None = None
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The indexer's own errors quote CIDs and paths from the chain: untrusted as well.
        if self.error is not None:
            object.__setattr__(self, "error", printable(self.error, MAX_ERROR_CHARS))


def parse_card(raw: bytes, *, max_bytes: int = MAX_CARD_BYTES) -> Card:
    """Decode, check and normalise a card, refusals included in the result: it raises
    nothing for any input. Linear in the card's size."""
    try:
        data = _accepted(raw, max_bytes)
    except _Refusal as refusal:
        return Card(refusal.code, refusal.message)
    flags = []
    if _has_spoofing_word(data["name"]):
        flags.append("name_mixed_scripts")
    if any(_has_spoofing_word(tag) for tag in data.get("tags", ())):
        flags.append("tags_mixed_scripts")
    return Card("ok", None, data, tuple(flags))


class _Refusal(Exception):
    """Why a card is refused: a code from `REFUSAL_CODES` and a message for `card_error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _accepted(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The card, normalised, once it passed every rule; raises `_Refusal`."""
    if len(raw) > max_bytes:
        raise _Refusal("too_large", f"the card is over {max_bytes} bytes")
    document = _decode(raw)
    _check_strings(document)
    document = _normalised(document)
    # The first error, not jsonschema's best_match: that would collect one error per bad
    # item (30,000 one-character tags take half a second), and the first is already the
    # broadest, as CARD_SCHEMA lists `required` before `properties`, `maxItems` before
    # `items`.
    error = next(_VALIDATOR.iter_errors(document), None)
    if error is not None:
        where = _render_path(_linked(error.absolute_path))
        raise _Refusal(
            "invalid_card",
            f"the card does not fit the schema{f' at {where}' if where else ''}: "
            + _schema_problem(error),
        )
    assert isinstance(document, dict)  # the schema says so
    return document


# ------------------------------------------------------------------------ decoding


def _decode(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refusal(
            "invalid_unicode",
            f"the card is not valid UTF-8: byte 0x{raw[exc.start]:02X} at offset {exc.start}",
        ) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        orjson_error = str(exc)
    # orjson refuses an escaped lone surrogate ("\ud800") and a raw control character in a
    # string as bad JSON; the stdlib parser, told to, accepts both, so a second reading
    # gives those cards their own codes and names the field.
    try:
        lenient = json.loads(text, strict=False)
    except (ValueError, RecursionError):
        pass
    else:
        _check_strings(lenient)
    raise _Refusal("invalid_json", "the card is not JSON: " + printable(orjson_error, 250))


# --------------------------------------------------------------------- text rules

_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)
)
_LINE_BREAKS = "\t\n\r\u2028\u2029"
_BIDI_REORDERING = "\u202a-\u202e\u2066-\u2069"
_BIDI_MARKS = "\u061c\u200e\u200f"
_EMOJI_PRESENTATION = "\ufe0e\ufe0f"

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_NONCHARACTERS}]")
_DESCRIPTION_CONTROLS = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_NONCHARACTERS}]")
_REORDERING = re.compile(f"[{_BIDI_REORDERING}]")
# Every format character (Cf) as of Unicode 15, plus the default-ignorable and blank
# characters that are not Cf: each makes two names that look the same compare different.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)

# Anything any rule could refuse: most strings match none, and one search settles them.
_SUSPECT = re.compile(
    "|".join(p.pattern for p in (_SURROGATES, _CONTROLS, _DESCRIPTION_CONTROLS, _INVISIBLE))
)

_Rules = tuple[tuple[str, re.Pattern[str]], ...]
_LABEL_RULES: _Rules = (
    ("invalid_unicode", _SURROGATES),
    ("control_chars", _CONTROLS),
    ("invisible_chars", _INVISIBLE),
)
_DESCRIPTION_RULES: _Rules = (
    ("invalid_unicode", _SURROGATES),
    ("control_chars", _DESCRIPTION_CONTROLS),
    ("invisible_chars", _REORDERING),
)
_TEXT_RULES: _Rules = (
    ("invalid_unicode", _SURROGATES),
    ("control_chars", _CONTROLS),
    ("invisible_chars", _REORDERING),
)

_FIELD_RULES: dict[str | int, _Rules] = {"name": _LABEL_RULES, "description": _DESCRIPTION_RULES}

# A path through the card as a linked list (parent, key or index), so that walking a
# deep card costs one node per value rather than a copy of the whole path.
_Path = tuple["_Path", str | int] | None


def _check_strings(document: Any) -> None:
    """Hold every key and string in `document` to its field's rules (a container's own
    strings before those of the containers inside it), and refuse nesting deeper than
    `MAX_DEPTH`."""
    if isinstance(document, str):
        _check_text(document, None, _TEXT_RULES, is_key=False)
    stack: list[tuple[Any, _Path, int]] = [(document, None, 0)]
    while stack:
        value, path, depth = stack.pop()
        if not isinstance(value, dict | list):
            continue
        if depth == MAX_DEPTH:
            raise _Refusal(
                "invalid_card",
                f"the card nests more than {MAX_DEPTH} levels deep (at {_render_path(path)})",
            )
        pairs: Iterable[tuple[str | int, Any]]
        if isinstance(value, dict):
            for key in value:
                _check_text(key, (path, key), _TEXT_RULES, is_key=True)
            pairs, rules = value.items(), _TEXT_RULES
        else:
            pairs = enumerate(value)
            rules = _LABEL_RULES if path == (None, "tags") else _TEXT_RULES
        nested: list[tuple[Any, _Path, int]] = []
        for key, item in pairs:
            where = (path, key)
            if isinstance(item, str):
                _check_text(item, where, _FIELD_RULES.get(key, rules) if path is None else rules)
            elif isinstance(item, dict | list):
                nested.append((item, where, depth + 1))
        stack.extend(reversed(nested))


def _check_text(text: str, path: _Path, rules: _Rules, *, is_key: bool = False) -> None:
    if _SUSPECT.search(text) is None:
        return
    for code, pattern in rules:
        for match in pattern.finditer(text):
            at = match.start()
            char = text[at]
            if char in _EMOJI_PRESENTATION and at and unicodedata.category(text[at - 1]) == "So":
                continue
            raise _Refusal(code, _refusal(text, path, at, is_key=is_key))


def _refusal(text: str, path: _Path, at: int, *, is_key: bool) -> str:
    char = text[at]
    point = ord(char)
    hint = ""
    if 0xD800 <= point <= 0xDFFF:
        what = "a lone surrogate"
        hint = ", which is not valid Unicode"
    elif char in _LINE_BREAKS:
        what = "a tab or line break"
        hint = "; they are allowed only in the description"
    elif point <= 0x9F:
        what = "a control character"
    elif _CONTROLS.match(char):
        what = "a Unicode noncharacter"
    elif _REORDERING.match(char):
        what = "a bidirectional control"
        hint = ", which reorders the text shown around it"
    elif char in _BIDI_MARKS:
        what = "a bidirectional mark"
        hint = ", not allowed in the name or tags"
    else:
        what = "an invisible character"
        hint = ", not allowed in the name or tags"
    where = _render_path(path)
    if is_key:
        parent = _render_path(path[0]) if path else ""
        subject = f'the key "{printable(text, 40, also=_QUOTES)}" in the card' + (
            f"'s {parent}" if parent else ""
        )
    else:
        subject = f"the card's {where}" if where else "the card"
    return f"{subject} has {what} U+{point:04X} at character {at}{hint}"


# ---------------------------------------------------------------- normalisation


def _normalised(document: Any) -> Any:
    """The card with its displayed fields in NFC, labels stripped; anything of the wrong
    type is left for the schema to refuse."""
    if not isinstance(document, dict):
        return document
    card = dict(document)
    for field in ("name", "license"):
        if isinstance(card.get(field), str):
            card[field] = unicodedata.normalize("NFC", card[field]).strip()
    if isinstance(card.get("description"), str):
        card["description"] = unicodedata.normalize("NFC", card["description"])
    if isinstance(card.get("tags"), list):
        card["tags"] = [
            unicodedata.normalize("NFC", tag).strip() if isinstance(tag, str) else tag
            for tag in card["tags"]
        ]
    return card


# ----------------------------------------------------------------------- scripts

_NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED", "Unknown"})
# UTS #39's augmented script sets: Han is written together with kana in Japanese, with
# Hangul in Korean and with Bopomofo in Chinese, so "画像分類モデル" is one writing system.
_WRITING_SYSTEMS = {
    "HAN": frozenset({"HAN", "JAPANESE", "KOREAN", "BOPOMOFO"}),
    "HIRAGANA": frozenset({"JAPANESE"}),
    "KATAKANA": frozenset({"JAPANESE"}),
    "HANGUL": frozenset({"KOREAN"}),
    "BOPOMOFO": frozenset({"BOPOMOFO"}),
}


def _systems(script: str) -> frozenset[str]:
    return _WRITING_SYSTEMS.get(script, frozenset({script}))


def _has_spoofing_word(text: str) -> bool:
    """Whether a word (a run of letters, marks and digits) mixes writing systems and one
    of its letters has a look-alike in another system of the same word.

    Words, not the whole text: "ИИ модель v2" or "GPT-2 Ελληνικά" mix scripts across
    words, which is ordinary; "paypal" with a Cyrillic U+0430 for an "a" mixes them inside
    one.
    """
    word: list[str] = []
    for char in text + " ":
        if unicodedata.category(char)[0] in "LMN":
            word.append(char)
            continue
        if word and _is_spoofing("".join(word)):
            return True
        word = []
    return False


def _is_spoofing(word: str) -> bool:
    scripts = {
        str(categories.alias(char)) for char in word if unicodedata.category(char)[0] == "L"
    } - _NEUTRAL_SCRIPTS
    if len(scripts) < 2 or frozenset.intersection(*(_systems(s) for s in scripts)):
        return False
    for script in scripts:
        # the word's characters from other scripts that could pass for one of `script`'s
        for hit in confusables.is_confusable(word, greedy=True, preferred_aliases=[script]) or []:
            alias = str(hit["alias"])
            if alias not in _NEUTRAL_SCRIPTS and not _systems(alias) & _systems(script):
                return True
    return False


# ---------------------------------------------------------------------- messages


def _schema_problem(error: Any) -> str:
    """jsonschema's message, unless it quotes a long value: then the rule broken."""
    if len(error.message) <= 160:
        return printable(str(error.message), 160)
    rule = f"{error.validator} is {printable(json.dumps(error.validator_value), 80)}"
    if isinstance(error.instance, str):
        return f"{rule} (it has {len(error.instance)} characters)"
    if isinstance(error.instance, list | dict):
        return f"{rule} (it has {len(error.instance)} items)"
    return rule


def printable(text: str, limit: int = MAX_ERROR_CHARS, *, also: str = "") -> str:
    """Untrusted text made safe to store and show: at most `limit` characters, anything
    unprintable (or in `also`) shown as U+XXXX, cut short with "…"."""
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = char if char.isprintable() and char not in also else f"U+{ord(char):04X}"
        if size + len(piece) > limit:
            while size > limit - 1:  # room for the ellipsis
                size -= len(pieces.pop())
            return "".join(pieces) + "…"
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def _linked(segments: Any) -> _Path:
    path: _Path = None
    for segment in segments:
        path = (path, segment)
    return path


_QUOTES = '"\\'  # shown as U+XXXX inside a quoted key
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


def _render_path(path: _Path) -> str:
    """`signature.inputs[0]`, or `signature["odd key"]`; "" for the card itself."""
    parts: list[str] = []
    while path is not None:
        path, segment = path
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _PLAIN_KEY.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            parts.append(f'["{printable(segment, 40, also=_QUOTES)}"]')
    rendered = "".join(reversed(parts)).removeprefix(".")
    return rendered if len(rendered) <= 120 else "…" + rendered[-119:]
