"""The text rules every string of a model card is held to (no control or invisible
characters; line breaks only in the description), mixed-script detection for names and
tags, and `printable`: how untrusted text from the chain or IPFS is made safe to store
and show. The rules themselves are described in `cards`."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from confusable_homoglyphs import categories, confusables  # type: ignore[import-untyped]

MAX_ERROR_CHARS = 300  # what `card_error` shows
# Far more than a signature needs; deeper JSON makes repr() and the stdlib json module (so
# jsonschema's messages, SQLAlchemy's JSON columns) hit Python's recursion limit.
MAX_DEPTH = 32


class Refusal(Exception):
    """Why a card is refused: a code from `REFUSAL_CODES` and a message for `card_error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def check_strings(document: Any) -> None:
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
            raise Refusal(
                "invalid_card",
                f"the card nests more than {MAX_DEPTH} levels deep (at {render_path(path)})",
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
            raise Refusal(code, _refusal(text, path, at, is_key=is_key))


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
    where = render_path(path)
    if is_key:
        parent = render_path(path[0]) if path else ""
        subject = f'the key "{printable(text, 40, also=_QUOTES)}" in the card' + (
            f"'s {parent}" if parent else ""
        )
    else:
        subject = f"the card's {where}" if where else "the card"
    return f"{subject} has {what} U+{point:04X} at character {at}{hint}"


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


def has_spoofing_word(text: str) -> bool:
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


def linked(segments: Any) -> _Path:
    path: _Path = None
    for segment in segments:
        path = (path, segment)
    return path


_QUOTES = '"\\'  # shown as U+XXXX inside a quoted key
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


def render_path(path: _Path) -> str:
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
