"""Reading and validating the prompt CSVs that marketing teams export from Excel or Google Sheets.

Reading is forgiving about form and strict about content. Form: UTF-8 with or without BOM, UTF-16
with BOM, cp1252 as a fallback; comma, semicolon or tab delimiters (sniffed from the header); quoted
newlines; CRLF; blank lines; header names in any case with surrounding spaces. Content: each row is
accepted as a `RowSpec` or rejected with a `Rejection` whose reason says what to fix. Nothing is
dropped silently: rows read = accepted + rejected + blank.

Row numbers are spreadsheet row numbers: the header is row 1, the first data row is row 2.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.naming import slugify
from gen_engine.render import labels

MAX_SEED = 2**32 - 1
FORMATS = {"png": "png", "webp": "webp", "jpeg": "jpeg", "jpg": "jpeg"}
KNOWN_COLUMNS = ("prompt", "seed", "count", "asset_name", "size", "format", "variety", "label")
LABELS = ("none", "corner", "edge")  # the visible AI label (render.labels)
# Cells up to this size are read (and rejected by the row rules when too long); Python's default of 128 KiB
# raised an error that stopped the whole file. Larger than this, the file is refused as not a prompt CSV.
FIELD_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
# Bidirectional embedding, override and isolate controls: they make a prompt display as other text than
# it is (the "Trojan Source" trick). Zero-width spaces are dropped; joiners (U+200C/U+200D) are kept,
# since emoji sequences and several scripts need them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ZERO_WIDTH = {ord(c): None for c in "\u200b\u2060\ufeff"}
AUTO_ASSET = re.compile(r"row\d{6}")
_BINARY_MAGIC = {b"PK\x03\x04": "a ZIP archive (an .xlsx workbook?)", b"\xd0\xcf\x11\xe0": "an old Excel .xls file",
                 b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"\xff\xd8\xff": "a JPEG image"}


class CsvError(UserError):
    """The file as a whole cannot be read as a prompt CSV; the message names the file and the fix."""


@dataclass(frozen=True)
class RowSpec:
    """One accepted row: what to render and under which name."""

    row_number: int
    prompt: str
    seed: int | None  # None: derived per image from (campaign, asset, k)
    count: int
    asset: str  # sanitised slug, unique within the CSV
    size: tuple[int, int] | None  # None: the model's native resolution
    format: str
    variety: float
    extra: dict[str, str] = field(default_factory=dict)
    label: str = "none"  # visible AI label: none, corner or edge


@dataclass(frozen=True)
class Rejection:
    row_number: int
    reason: str
    fields: dict[str, str]


@dataclass
class ReadStats:
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    blank: int = 0
    encoding: str = ""
    delimiter: str = ""
    columns: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.rows_read == self.accepted + self.rejected + self.blank, self


@dataclass(frozen=True)
class RowRules:
    """What a row may ask for: built from the settings (`from_settings`); the defaults are the settings'."""

    allowed_sizes: tuple[str, ...] = ("64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024")
    default_format: str = "png"
    default_variety: float = 1.0
    max_prompt: int = 500
    max_count: int = 16
    default_label: str = "none"  # the campaign's visible label (Settings.render_label, a campaign parameter)
    label_text: str = ""  # Settings.render_label_text
    native_size: int | None = None  # the model's resolution: a label must fit rows without a size

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RowRules:
        rules = cls(allowed_sizes=tuple(settings.render_allowed_sizes), default_format=settings.render_default_format,
                    default_variety=settings.render_default_variety, max_prompt=settings.render_max_prompt_chars,
                    max_count=settings.render_max_count, default_label=settings.render_label,
                    label_text=settings.render_label_text)
        return replace(rules, **overrides)  # type: ignore[arg-type]


# --- decoding ---------------------------------------------------------------------------------------
def detect_encoding(path: Path, name: str) -> str:
    """The file's text encoding: BOMs first, then strict UTF-8, then cp1252. Binary files are refused."""
    with open(path, "rb") as f:
        head = f.read(8192)
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise CsvError(f"{name} is {what}, not CSV text. Export the sheet as CSV (File > Save As > CSV UTF-8).")
    if head.startswith(codecs.BOM_UTF8):
        enc = "utf-8-sig"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        enc = "utf-16"
    else:
        if head and (head.count(b"\x00") > len(head) // 10 or _nontext_ratio(head) > 0.1):
            raise CsvError(f"{name} is not CSV text (it looks like binary data). Export the sheet as CSV UTF-8.")
        enc = "utf-8"
        try:
            dec = codecs.getincrementaldecoder("utf-8")()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    dec.decode(chunk)
                dec.decode(b"", final=True)
        except UnicodeDecodeError:
            enc = "cp1252"
    if enc == "cp1252":
        try:
            with open(path, encoding="cp1252") as f:
                while f.read(1 << 20):
                    pass
        except UnicodeDecodeError as e:
            raise CsvError(f"{name} is neither UTF-8 nor Windows-1252 text (byte {e.start}). "
                           "Export the sheet as CSV UTF-8.") from None
    return enc


def _nontext_ratio(b: bytes) -> float:
    bad = sum(1 for c in b if c < 32 and c not in (9, 10, 13))
    return bad / max(len(b), 1)


def sniff_delimiter(header_line: str) -> str:
    """Comma, semicolon or tab: whichever splits the header (outside quotes) into the most fields."""
    outside = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: outside.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def open_text(path: Path, name: str) -> tuple[IO[str], ReadStats]:
    enc = detect_encoding(path, name)
    f = open(path, encoding=enc, newline="")  # noqa: SIM115 (closed by the caller)
    first = ""
    for line in f:
        if line.strip():
            first = line
            break
    f.seek(0)
    return f, ReadStats(encoding=enc, delimiter=sniff_delimiter(first))


# --- validation -------------------------------------------------------------------------------------------
def _control_char(text: str) -> str | None:
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            name = {"\x00": "NUL", "\t": "TAB", "\n": "line break", "\r": "carriage return"}.get(ch, f"U+{ord(ch):04X}")
            return f"{name} at character {i + 1}"
    return None


def _int_field(raw: str, name: str, lo: int, hi: int) -> int:
    s = raw.strip().replace("_", "")
    if re.fullmatch(r"[+-]?\d+(\.0+)?", s) is None:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got '{raw[:40]}'")
    v = int(s.split(".")[0])
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {v}")
    return v


def validate_row(row_number: int, fields: dict[str, str], rules: RowRules, seen_assets: dict[str, int]) -> RowSpec:
    """Turn one CSV row into a RowSpec or raise ValueError with the reason."""
    # Line breaks and tabs typed inside a cell (Alt+Enter in Excel) become spaces; other control characters
    # (NUL, escapes) are refused below.
    prompt = re.sub(r"[ \t\r\n]+", " ", fields.get("prompt", "").translate(ZERO_WIDTH)).strip()
    if not prompt:
        raise ValueError("prompt is empty")
    if len(prompt) > rules.max_prompt:
        raise ValueError(f"prompt is {len(prompt)} characters long; the limit is {rules.max_prompt}")
    if bad := _control_char(prompt):
        raise ValueError(f"prompt contains a control character ({bad}); remove it")
    if (bidi := next((i for i, ch in enumerate(prompt) if ch in BIDI_CONTROLS), None)) is not None:
        raise ValueError(f"prompt contains a bidirectional override (U+{ord(prompt[bidi]):04X} at character "
                         f"{bidi + 1}), which makes it display as other text than it is; remove it")
    seed = _int_field(fields["seed"], "seed", 0, MAX_SEED) if fields.get("seed", "").strip() else None
    count = _int_field(fields["count"], "count", 1, rules.max_count) if fields.get("count", "").strip() else 1

    raw_asset = fields.get("asset_name", "").strip()
    if raw_asset:
        if raw_asset.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", raw_asset):
            raise ValueError(f"asset_name '{raw_asset[:60]}' is an absolute path; use a plain name")
        if ".." in re.split(r"[\\/]", raw_asset):
            raise ValueError(f"asset_name '{raw_asset[:60]}' contains '..'; use a plain name")
        if _control_char(raw_asset):
            raise ValueError("asset_name contains a control character")
        asset = slugify(raw_asset.replace("/", "-").replace("\\", "-"))
        if AUTO_ASSET.fullmatch(asset.lower()):
            raise ValueError(f"asset_name '{asset}' has the form of an automatic name (rowNNNNNN, given to rows "
                             "without a name); choose another")
        if not asset:
            raise ValueError(f"asset_name '{raw_asset[:60]}' has no usable characters (letters, digits, . _ -)")
    else:
        asset = f"row{row_number:06d}"
    if asset.lower() in seen_assets:
        raise ValueError(f"asset_name '{asset}' is already used by row {seen_assets[asset.lower()]}; names must be "
                         "unique")

    size = None
    if raw := fields.get("size", "").strip().lower().replace(" ", ""):
        if raw not in rules.allowed_sizes:
            raise ValueError(f"size '{raw[:20]}' is not allowed; use one of {', '.join(rules.allowed_sizes)}")
        w, h = raw.split("x")
        size = (int(w), int(h))
    fmt_raw = fields.get("format", "").strip().lower().lstrip(".") or rules.default_format
    if fmt_raw not in FORMATS:
        raise ValueError(f"format '{fmt_raw[:20]}' is not supported; use png, webp or jpeg")
    variety = rules.default_variety
    if raw := fields.get("variety", "").strip():
        try:
            variety = float(raw.replace(",", "."))
        except ValueError:
            raise ValueError(f"variety must be a number from 0 to 1, got '{raw[:20]}'") from None
        if not (math.isfinite(variety) and 0.0 <= variety <= 1.0):
            raise ValueError(f"variety must be from 0 to 1, got '{raw[:20]}'")
    label = fields.get("label", "").strip().lower() or rules.default_label
    if label not in LABELS:
        raise ValueError(f"label '{label[:20]}' is not one of {', '.join(LABELS)} (the visible AI label)")
    side = size or ((rules.native_size, rules.native_size) if rules.native_size else None)
    if label != "none" and side and (why := labels.fits(labels.label_text(prompt, rules.label_text), *side, label)):
        raise ValueError(why)
    seen_assets[asset.lower()] = row_number
    extra = {k: v for k, v in fields.items() if k not in KNOWN_COLUMNS}
    return RowSpec(row_number, prompt, seed, count, asset, size, FORMATS[fmt_raw], variety, extra, label)


class PromptCsv:
    """Stream a prompt CSV as accepted `RowSpec`s and `Rejection`s; `stats` holds the counts after iteration.

    Raises CsvError before the first row when the file as a whole is unusable (binary, no header,
    no prompt column, duplicate column names, empty).
    """

    def __init__(self, path: Path, name: str, rules: RowRules = RowRules()) -> None:
        self.path, self.name, self.rules = Path(path), name, rules
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[RowSpec | Rejection]:
        f, stats = open_text(self.path, self.name)
        self.stats = stats
        seen_assets: dict[str, int] = {}
        with f:
            header: list[str] | None = None
            for row_number, rec, first_line, last_line, at_end in self._records(f, stats.delimiter):
                if header is None:
                    if any(c.strip() for c in rec):
                        header = self._header(rec)
                        stats.columns = header
                    continue
                stats.rows_read += 1
                if not any(c.strip() for c in rec):
                    stats.blank += 1
                    continue
                fields = {h: v for h, v in zip(header, rec, strict=False) if h}
                try:
                    if at_end and last_line > first_line and self._open_quote_from(first_line, stats):
                        raise ValueError(f"a quote opened in this row (line {first_line}) is never closed, so "
                                         f"lines {first_line}-{last_line} were read as one cell; close the quote "
                                         "or remove it")
                    if len(rec) > len(header) and any(c.strip() for c in rec[len(header):]):
                        raise ValueError(f"row has {len(rec)} fields but the header has {len(header)}; check for "
                                         "an unquoted delimiter in a prompt")
                    spec = validate_row(row_number, fields, self.rules, seen_assets)
                except ValueError as e:
                    stats.rejected += 1
                    yield Rejection(row_number, str(e), fields)
                    continue
                stats.accepted += 1
                yield spec
            if header is None:
                raise CsvError(f"{self.name} is empty: it needs a header row (prompt,seed,count,...) and rows below it")
        stats.check()

    def _records(self, f: IO[str], delimiter: str) -> Iterator[tuple[int, list[str], int, int, bool]]:
        """(row number, fields, first and last physical line, is it the last record) with one record of
        look-ahead; a cell over `FIELD_LIMIT` is a whole-file error naming its row."""
        reader = csv.reader(f, delimiter=delimiter)
        pending: tuple[int, list[str], int, int] | None = None
        line = 0
        for n in itertools.count(1):
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise CsvError(f"{self.name}, row {n} (line {line + 1}): {e}; this is not a prompt CSV") from None
            if pending is not None:
                yield (*pending, False)
            pending = (n, rec, line + 1, reader.line_num)
            line = reader.line_num
        if pending is not None:
            yield (*pending, True)

    def _open_quote_from(self, first_line: int, stats: ReadStats) -> bool:
        """Does the text from ``first_line`` on end inside a quoted cell? (The lenient reader accepts that
        silently and swallows the rest of the file into one cell; a strict one says so.)"""
        with open(self.path, encoding=stats.encoding, newline="") as f:
            tail = "".join(itertools.islice(f, first_line - 1, None))
        try:
            for _ in csv.reader(io.StringIO(tail), delimiter=stats.delimiter, strict=True):
                pass
        except csv.Error as e:
            return "unexpected end of data" in str(e)
        return False

    def _header(self, rec: list[str]) -> list[str]:
        header = [c.strip().lstrip("\ufeff").lower() for c in rec]
        dupes = sorted({c for c in header if c and header.count(c) > 1})
        if dupes:
            raise CsvError(f"{self.name}: the header names {dupes} more than once; rename the columns")
        if "prompt" not in header:
            found = ", ".join(h for h in header if h)[:200] or "nothing"
            raise CsvError(f"{self.name}: no 'prompt' column in the header (found: {found}). The first row must name "
                           "the columns, e.g. prompt,seed,count,asset_name")
        return header


FORMULA_LEADS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # ASCII and full-width


def neutralise_cell(value: object) -> str:
    """Defuse spreadsheet formulas by prefixing a quote: cells starting with = + - @ (or their full-width
    forms, which spreadsheets also accept), tab or CR, also behind leading spaces (spreadsheets skip them)."""
    s = "" if value is None else str(value)
    return "'" + s if s[:1] in ("\t", "\r") or s.lstrip()[:1] in FORMULA_LEADS else s


class SafeCsvWriter:
    """Rows written one at a time to an open text file (``encoding="utf-8-sig"`` gives Excel its BOM),
    every cell neutralised as in `write_safe_csv`: for outputs too large to build in memory."""

    def __init__(self, f: IO[str], columns: list[str]) -> None:
        self.columns = columns
        self._w = csv.writer(f, lineterminator="\r\n")
        self._w.writerow([neutralise_cell(c) for c in columns])

    def write(self, row: dict[str, object]) -> None:
        self._w.writerow([neutralise_cell(row.get(c, "")) for c in self.columns])


def write_safe_csv(rows: list[dict[str, object]], columns: list[str]) -> bytes:
    """UTF-8 (with BOM, so Excel reads it right) CSV with every cell neutralised."""
    buf = io.StringIO()
    w = SafeCsvWriter(buf, columns)
    for r in rows:
        w.write(r)
    return codecs.BOM_UTF8 + buf.getvalue().encode("utf-8")
