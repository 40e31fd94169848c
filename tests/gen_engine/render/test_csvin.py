"""The CSV contract: every reading variant, every hostile row, and the books always balance."""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path

import pytest

from gen_engine.naming import slugify
from gen_engine.render.csvin import CsvError, PromptCsv, Rejection, RowSpec, neutralise_cell, write_safe_csv

GOOD = "prompt,seed,count,asset_name\na red circle,1,2,hero\na blue square,2,1,promo\n"


def read(tmp_path: Path, data: bytes | str, name: str = "in.csv") -> tuple[list[RowSpec], list[Rejection], PromptCsv]:
    p = tmp_path / name
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    reader = PromptCsv(p, name)
    items = list(reader)
    acc = [i for i in items if isinstance(i, RowSpec)]
    rej = [i for i in items if isinstance(i, Rejection)]
    st = reader.stats
    assert st.rows_read == st.accepted + st.rejected + st.blank == len(acc) + len(rej) + st.blank
    return acc, rej, reader


@pytest.mark.parametrize("variant", ["utf8", "utf8-bom", "utf16-bom", "cp1252", "semicolon", "tab", "crlf"])
def test_reading_variants(tmp_path: Path, variant: str) -> None:
    text = "Prompt ; Seed;COUNT; asset_name \r\n" if variant == "semicolon" else GOOD.splitlines()[0] + "\n"
    body = "café crème circle,1,2,hero\na blue square,2,1,promo\n"
    if variant == "semicolon":
        data: bytes | str = text + body.replace(",", ";")
    elif variant == "tab":
        data = (GOOD.splitlines()[0] + "\n" + body).replace(",", "\t")
    elif variant == "crlf":
        data = (text + body).replace("\n", "\r\n")
    elif variant == "utf8-bom":
        data = codecs.BOM_UTF8 + (text + body).encode("utf-8")
    elif variant == "utf16-bom":
        data = (text + body).encode("utf-16")  # BOM included
    elif variant == "cp1252":
        data = (text + body).encode("cp1252")
    else:
        data = text + body
    acc, rej, reader = read(tmp_path, data)
    assert not rej and [a.prompt for a in acc] == ["café crème circle", "a blue square"]
    assert acc[0].count == 2 and acc[0].seed == 1 and acc[0].asset == "hero" and acc[0].row_number == 2
    assert reader.stats.encoding == {"utf8-bom": "utf-8-sig", "utf16-bom": "utf-16", "cp1252": "cp1252"}.get(
        variant, "utf-8")


def test_quoted_newlines_blank_lines_and_passthrough_columns(tmp_path: Path) -> None:
    data = ('\n\nprompt,Channel ,asset_name\n"an orange diamond\non black",social,d1\n\n,,\n'
            '"a ""quoted"" star",web,d2\n')
    acc, rej, reader = read(tmp_path, data)
    assert [a.prompt for a in acc] == ["an orange diamond on black", 'a "quoted" star']
    assert acc[0].extra == {"channel": "social"} and reader.stats.blank == 2 and not rej
    assert acc[1].row_number == 7  # spreadsheet rows: blank lines count, a quoted newline stays in its row


@pytest.mark.parametrize(("data", "match"), [
    (b"PK\x03\x04" + b"\x00" * 100, "ZIP archive"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "PNG image"),
    (bytes(range(256)) * 8, "not CSV text"),
    (b"", "is empty"),
    (b"\n\n  \n", "is empty"),
    (b"title,seed\nhello,1\n", "no 'prompt' column"),
    (b"prompt,seed,Prompt\nx,1,y\n", "more than once"),
])
def test_whole_file_errors_name_the_file(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(CsvError, match=match) as e:
        read(tmp_path, data, "campaign_q3.csv")
    assert "campaign_q3.csv" in str(e.value)


def test_real_xlsx_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(CsvError, match="Export the sheet as CSV"):
        read(tmp_path, buf.getvalue(), "sheet.csv")


HOSTILE = [
    ('=HYPERLINK("http://x")', "", "", "formula", None),  # accepted: it is only text for the model
    ("<script>alert(1)</script>", "", "", "xss", None),
    ("a circle", "", "", "../../etc/passwd", "contains '..'"),
    ("a circle", "", "", "/abs/path", "absolute path"),
    ("a circle", "", "", "C:\\\\win", "absolute path"),
    ("x" * 20000, "", "", "long", "20000 characters"),
    ("a circle", "-1", "", "neg", "seed must be from 0"),
    ("a circle", "abc", "", "nan", "whole number"),
    ("a circle", str(2**64), "", "big", "seed must be from 0 to 4294967295"),
    ("a circle", "", "0", "c0", "count must be from 1 to 16"),
    ("a circle", "", "1000000", "c6", "count must be from 1 to 16"),
    ("", "", "", "empty", "prompt is empty"),
    ("   ", "", "", "blankp", "prompt is empty"),
    ("a\x00circle", "", "", "nul", "control character (NUL"),
    ("a circle", "", "", "formula", "already used by row 2"),
    ("a circle", "", "", "✿✿✿", "no usable characters"),
]


def test_hostile_rows_are_rejected_with_reasons_or_made_safe(tmp_path: Path) -> None:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "seed", "count", "asset_name"])
    for prompt, seed, count, asset, _ in HOSTILE:
        w.writerow([prompt, seed, count, asset])
    acc, rej, _ = read(tmp_path, buf.getvalue())
    reasons = {r.row_number: r.reason for r in rej}
    for i, (*_, expect) in enumerate(HOSTILE):
        row = i + 2
        if expect is None:
            assert row not in reasons, reasons.get(row)
        else:
            assert expect in reasons[row], (row, reasons.get(row))
    assert {a.asset for a in acc} == {"formula", "xss"}
    assert all("/" not in a.asset and ".." not in a.asset for a in acc)


def test_slug_and_cell_neutralisation() -> None:
    assert slugify("Green Star ★ / v2") == "Green-Star-v2"
    assert slugify("..hidden") == "hidden"
    for bad in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert neutralise_cell(bad).startswith("'")
    out = write_safe_csv([{"prompt": "=cmd|' /C calc'!A0", "n": 1}], ["prompt", "n"]).decode("utf-8-sig")
    assert "'=cmd" in out


# --- edges found in review (issue 19, item 9) -----------------------------------------------------------
def test_a_field_over_128_kib_is_a_rejected_row_not_a_crash(tmp_path: Path) -> None:
    acc, rej, _ = read(tmp_path, "prompt,asset_name\n" + '"' + "x" * 200_000 + '",big\na red circle,ok\n')
    assert [a.asset for a in acc] == ["ok"] and "characters long" in rej[0].reason and rej[0].row_number == 2


def test_an_unclosed_quote_is_rejected_at_the_row_where_it_opened(tmp_path: Path) -> None:
    data = 'prompt,seed\na red circle,1\n"a blue star,2\na green heart,3\nmore,4\n'
    acc, rej, _ = read(tmp_path, data)
    assert [a.prompt for a in acc] == ["a red circle"]
    assert len(rej) == 1 and rej[0].row_number == 3 and "never closed" in rej[0].reason
    assert "line 3" in rej[0].reason
    acc, rej, _ = read(tmp_path, 'prompt\n"two\nlines"\nlast\n')  # a closed multi-line cell is still fine
    assert [a.prompt for a in acc] == ["two lines", "last"] and not rej


@pytest.mark.parametrize("cell", [" =1+1", "\u3000=cmd", "＝HYPERLINK(\"x\")", "＋1", "－1", "＠SUM(A1)", "  @x"])
def test_formulas_behind_spaces_or_in_full_width_are_defused(cell: str) -> None:
    assert neutralise_cell(cell).startswith("'")


def test_bidi_overrides_are_refused_and_zero_width_spaces_dropped(tmp_path: Path) -> None:
    data = ("prompt,asset_name\nsale \u202eevil\u202c text,bidi\nred\u200b heart\ufeff,zw\n"
            "family 👨\u200d👩\u200d👧,zwj\n")
    acc, rej, _ = read(tmp_path, data)
    assert [r.row_number for r in rej] == [2] and "bidirectional" in rej[0].reason
    assert [a.prompt for a in acc] == ["red heart", "family 👨\u200d👩\u200d👧"]  # joiners of emoji are kept


def test_automatic_asset_names_cannot_collide_with_user_names(tmp_path: Path) -> None:
    acc, rej, _ = read(tmp_path, "prompt,asset_name\na red circle,Row000003\na blue square,\n")
    assert [a.asset for a in acc] == ["row000003"] and acc[0].row_number == 3  # the unnamed row keeps its name
    assert rej[0].row_number == 2 and "automatic" in rej[0].reason
