"""CSV and JSON Lines export: column order, quoting, formula neutralising, precision."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from artnote.catalog import FileState, open_catalog
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.export import CSV_COLUMNS, write_csv, write_jsonl
from artnote.records import Annotation, Provenance

DOCUMENTED = (
    "path, sha256, width, height, alt_text, description, dominant_emotion, amusement, awe, "
    "contentment, excitement, anger, disgust, fear, sadness, something_else, explanation, "
    "model, adapter, status, annotated_at"
).split(", ")


def softmax(seed: int) -> list[float]:
    logits = np.random.default_rng(seed).normal(size=9) * 3
    e = np.exp(logits - logits.max())
    return [float(x) for x in e / e.sum()]


def row(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "path": "/museum/prints/hokusai/wave.jpg",
        "sha256": "ab" * 32,
        "width": 1131,
        "height": 707,
        "alt_text": "A great wave towers over three boats.",
        "description": 'Prussian blue, "Mount Fuji" small, behind;\nwhite foam like claws.',
        "dominant_emotion": "awe",
        **dict(zip(EMOTION_COLUMNS, softmax(0), strict=True)),
        "explanation": "It makes me feel awe because the wave dwarfs the boats.",
        "model": "tiny/llava",
        "adapter": None,
        "annotated_at": "2025-01-02T03:05:00+00:00",
        "image_id": 7,
        "annotation_id": 3,
        "provenance": {"model": "tiny/llava", "generation": {"alt_text_tokens": 48}, "ms": 1.5},
    }
    base.update(overrides)
    return base


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_columns_and_round_trip() -> None:
    out = io.StringIO(newline="")
    rows = [row(), row(path="/museum/葛飾北斎 ✨.jpg", status="approved", adapter="cd" * 8)]
    assert write_csv(rows, out) == 2
    text = out.getvalue()
    assert list(CSV_COLUMNS[: len(DOCUMENTED)]) == DOCUMENTED
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    assert text.count("\r\n") == 3  # the newline inside the description is quoted, not a row
    first, second = read_csv(text)
    assert first["description"] == rows[0]["description"]
    assert (first["status"], second["status"]) == ("draft", "approved")
    assert (first["adapter"], second["adapter"]) == ("", "cd" * 8)
    assert second["path"] == "/museum/葛飾北斎 ✨.jpg"
    assert (first["width"], first["image_id"]) == ("1131", "7")
    assert "provenance" not in first


def test_probabilities_keep_full_precision() -> None:
    rows = [row(**dict(zip(EMOTION_COLUMNS, softmax(seed), strict=True))) for seed in range(50)]
    out = io.StringIO(newline="")
    write_csv(rows, out)
    for original, parsed in zip(rows, read_csv(out.getvalue()), strict=True):
        values = [float(parsed[c]) for c in EMOTION_COLUMNS]
        assert values == [original[c] for c in EMOTION_COLUMNS]  # exact
        assert math.isclose(sum(values), 1.0, abs_tol=1e-6)


def test_formulas_are_neutralised_in_text_cells_only() -> None:
    nasty = {
        "alt_text": '=HYPERLINK("http://evil","click")',
        "description": "+1+1",
        "explanation": "-2 because",
        "model": "@SUM(A1:A2)",
        "dominant_emotion": "\tfear",
        "path": "\r/x.jpg",
    }
    out = io.StringIO(newline="")
    write_csv([row(**nasty, amusement=-0.0, width=-1)], out)
    parsed = read_csv(out.getvalue())[0]
    for column, value in nasty.items():
        assert parsed[column] == "'" + value, column
    assert (parsed["amusement"], parsed["width"]) == ("-0.0", "-1")  # numbers untouched
    assert parsed["sha256"] == "ab" * 32 and parsed["alt_text"].startswith("'=")
    safe = io.StringIO(newline="")
    write_csv([row()], safe)
    assert read_csv(safe.getvalue())[0]["alt_text"] == "A great wave towers over three boats."


def test_empty_export_is_a_header() -> None:
    out = io.StringIO(newline="")
    assert write_csv([], out) == 0
    assert out.getvalue() == ",".join(CSV_COLUMNS) + "\r\n"
    assert write_jsonl([], io.StringIO()) == 0


def test_jsonl_carries_everything_unaltered() -> None:
    when = datetime(2025, 1, 2, 3, 5, tzinfo=UTC)
    rows = [row(alt_text="=not a formula here", annotated_at=when), row(path="/m/é.jpg")]
    out = io.StringIO()
    assert write_jsonl(rows, out) == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "é" in lines[1]  # UTF-8, not \u escapes
    first = json.loads(lines[0])
    assert list(first)[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert first["alt_text"] == "=not a formula here"
    assert first["annotated_at"] == "2025-01-02T03:05:00+00:00"
    assert first["status"] == "draft"
    assert first["provenance"] == rows[0]["provenance"]
    assert [first[c] for c in EMOTION_COLUMNS] == [rows[0][c] for c in EMOTION_COLUMNS]


def test_catalog_rows_export(tmp_path: Path) -> None:
    prov = Provenance("tiny/llava", "r1", "llava", None, None, "1", "ph", {}, "torch", "cpu", 2.0)
    probs = dict(zip(EMOTIONS, softmax(3), strict=True))
    dominant = max(probs, key=probs.__getitem__)
    annotation = Annotation("-a dash first", "Long text.", probs, dominant, "Because.", prov)
    with open_catalog(tmp_path / "cat.db") as cat:
        cid = cat.ensure_collection(tmp_path)
        run = cat.start_run({}, "tiny/llava", None)
        ids = cat.record_files(cid, run, [FileState("a.jpg", 1, 1, "a" * 64)])
        cat.add_annotations(run, [(ids["a.jpg"], annotation)])
        csv_out, jsonl_out = io.StringIO(newline=""), io.StringIO()
        assert write_csv(cat.export_rows(), csv_out) == 1
        assert write_jsonl(cat.export_rows(), jsonl_out) == 1
    parsed = read_csv(csv_out.getvalue())[0]
    assert parsed["path"] == str(tmp_path / "a.jpg")
    assert parsed["alt_text"] == "'-a dash first"
    assert parsed["dominant_emotion"] == dominant and parsed["status"] == "draft"
    assert math.isclose(sum(float(parsed[c]) for c in EMOTION_COLUMNS), 1.0, abs_tol=1e-6)
    record = json.loads(jsonl_out.getvalue())
    assert record["provenance"]["prompt_hash"] == "ph" and record["run_id"] == run


def test_fast_csv_path_equals_the_row_path(tmp_path: Path) -> None:
    """`artnote export csv` formats Catalog.export_table(); it must write exactly what the
    dict rows of export_rows() give, reviews laid over included."""
    from artnote.export import write_csv_cells

    prov = Provenance(
        "tiny/llava", "r1", "llava", "ad" * 8, "v2", "1", "ph", {}, "onnx", "cpu", 2.0
    )
    annotations = []
    for i, (alt, desc) in enumerate(
        [
            ("=cmd()", 'Waves, "Fuji", foam;\nclaws.'),
            ("Plain", ""),
            ("A, B", "-minus first"),
        ]
    ):
        probs = dict(zip(EMOTIONS, softmax(i), strict=True))
        dominant = max(probs, key=probs.__getitem__)
        annotations.append(Annotation(alt, desc, probs, dominant, "Because.", prov))
    with open_catalog(tmp_path / "cat.db") as cat:
        cid = cat.ensure_collection(tmp_path / "a, b")
        run = cat.start_run({}, "tiny/llava", None)
        states = [FileState(f"{n}.jpg", 1, 1, c * 64) for n, c in zip("xyz", "abc", strict=True)]
        ids = cat.record_files(cid, run, states)
        cat.add_annotations(
            run, [(ids[s.relpath], a) for s, a in zip(states, annotations, strict=True)]
        )
        emotion = json.dumps({e: 1.0 if e == "fear" else 0.0 for e in EMOTIONS})
        cat.add_reviews(
            [
                (ids["x.jpg"], "correction", "description", 'Fixed, "really"'),
                (ids["x.jpg"], "correction", "emotion", emotion),
                (ids["y.jpg"], "approval", None, None),
            ],
            by="curator",
            source="test",
        )
        by_rows, by_table = io.StringIO(newline=""), io.StringIO(newline="")
        assert write_csv(cat.export_rows(provenance=False), by_rows) == 3
        assert write_csv_cells(cat.export_table(), by_table) == 3
    assert by_table.getvalue() == by_rows.getvalue()
    parsed = {Path(r["path"]).name: r for r in read_csv(by_table.getvalue())}
    assert parsed["x.jpg"]["description"] == 'Fixed, "really"'
    assert parsed["x.jpg"]["status"] == "corrected" and parsed["x.jpg"]["fear"] == "1.0"
    assert parsed["y.jpg"]["status"] == "approved" and parsed["z.jpg"]["status"] == "draft"
    assert parsed["x.jpg"]["alt_text"] == "'=cmd()" and parsed["y.jpg"]["adapter"] == "ad" * 8
    assert (
        parsed["z.jpg"]["alt_text"] == "A, B" and parsed["z.jpg"]["description"] == "'-minus first"
    )


def test_text_cells_are_quoted_and_odd_text_survives() -> None:
    odd = {"description": "unit\x1fseparator, inside", "alt_text": 'say "hi"', "adapter": ""}
    out = io.StringIO(newline="")
    write_csv([row(**odd), row()], out)
    lines = out.getvalue().split("\r\n")
    assert lines[2].startswith('"/museum/') and lines[2].endswith(",7,3")  # numbers bare
    first, second = read_csv(out.getvalue())
    for column, value in odd.items():
        assert first[column] == value, column
    assert second["width"] == "1131" and float(second["awe"]) == row()["awe"]
