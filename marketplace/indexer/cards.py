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
- `supersedes`: the model id of the earlier listing this one is a new version of; the
  indexer honours it only when both listings have the same seller and it is older.

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
import unicodedata
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from marketplace.indexer.card_text import (
    MAX_ERROR_CHARS,
    Refusal,
    check_strings,
    has_spoofing_word,
    linked,
    printable,
    render_path,
)

MAX_CARD_BYTES = 64 * 1024
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
        "supersedes": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
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
    except Refusal as refusal:
        return Card(refusal.code, refusal.message)
    flags = []
    if has_spoofing_word(data["name"]):
        flags.append("name_mixed_scripts")
    if any(has_spoofing_word(tag) for tag in data.get("tags", ())):
        flags.append("tags_mixed_scripts")
    return Card("ok", None, data, tuple(flags))


def _accepted(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The card, normalised, once it passed every rule; raises `Refusal`."""
    if len(raw) > max_bytes:
        raise Refusal("too_large", f"the card is over {max_bytes} bytes")
    document = _decode(raw)
    check_strings(document)
    document = _normalised(document)
    # The first error, not jsonschema's best_match: that would collect one error per bad
    # item (30,000 one-character tags take half a second), and the first is already the
    # broadest, as CARD_SCHEMA lists `required` before `properties`, `maxItems` before
    # `items`.
    error = next(_VALIDATOR.iter_errors(document), None)
    if error is not None:
        where = render_path(linked(error.absolute_path))
        raise Refusal(
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
        raise Refusal(
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
        check_strings(lenient)
    raise Refusal("invalid_json", "the card is not JSON: " + printable(orjson_error, 250))


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
