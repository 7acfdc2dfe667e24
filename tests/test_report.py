"""`artnote report`: one self-contained HTML page, opened in a real headless Chromium.

The catalogs are built without a model (as tests/test_trainer_robustness.py does): files
recorded, annotations written with known emotions, a failure, reviews, adapters. One
folder on disk is named like an HTML injection; a model name tries to close a script.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.corrections import approve, correct
from artnote.emotions import EMOTIONS
from artnote.records import Annotation, Provenance
from web.report import certainty, data_json, folder_of

EVIL_FOLDER = '<img src=x onerror="window.pwned=1">'
MATH_FOLDER = "cost $\\frac{$ sum"  # mathtext that would not parse, were it read as such
EVIL_MODEL = "evil</script><script>window.pwned=2</script><!-- $\\frac{$ & more"
EVIL_REASON = "truncated or corrupt image data: <b onmouseover=alert(1)>bad</b>"
UNIFORM = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
DATA_IDS = ("status", "failures", "emotions", "folders", "alt-text", "uncertain", "provenance")


def _dist(values: list[float]) -> dict[str, float]:
    return dict(zip(EMOTIONS, values, strict=True))


def _one_hot(label: str) -> dict[str, float]:
    return {e: float(e == label) for e in EMOTIONS}


def _skewed(i: int) -> dict[str, float]:
    """A distinct, uneven distribution per i (the top label takes between 0.3 and 0.9)."""
    top = 0.3 + 0.6 * (i % 7) / 6
    rest = (1 - top) / (len(EMOTIONS) - 1)
    return {e: top if k == i % len(EMOTIONS) else rest for k, e in enumerate(EMOTIONS)}


def _relpath(i: int) -> str:
    folder = EVIL_FOLDER if i % 3 == 0 else MATH_FOLDER if i in (7, 8) else "normal"
    return f"{folder}/img{i:02d}.jpg"


def _alt_text(k: int) -> str:
    return "A painting" + " with a long view" * (k % 18)  # 10 to 299 characters


def _image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _provenance(model: str, adapter_name: str | None) -> Provenance:
    return Provenance(model, None, "idefics3", None, adapter_name, "1", "ph", {}, "torch", "cpu", 1)


def _write_metrics(folder: Path, history: list[dict]) -> None:
    (folder / "final").mkdir(parents=True)
    text = json.dumps({"val_loss": 1.0, "history": history})
    (folder / "final" / "metrics.json").write_text(text, encoding="utf-8")


HISTORY = [
    {"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "emotion_accuracy": 0.25,
     "emotion_kl": 0.9, "alt_text": {"bleu4": 0.01, "meteor": None, "rouge_l": 0.2,
     "cider": None}, "description": None, "explanation": {"bleu4": 0.02}},
    {"epoch": 2, "train_loss": 1.6, "val_loss": 1.25, "emotion_accuracy": 0.5,
     "emotion_kl": 0.7, "alt_text": {"bleu4": 0.03, "meteor": 0.1, "rouge_l": 0.25,
     "cider": 0.05}},
]  # fmt: skip


@pytest.fixture
def catalog(tmp_path) -> dict:
    """A catalog of 26 annotated images (uniform, one-hot, tied and skewed emotions) in the root,
    a folder `normal` and a folder named like an HTML injection; one failed file; one
    emotion correction and one approval; two adapters, one without metrics.json.

    Returns db, expected (emotion -> sum of current probabilities), dominant counts,
    the relpaths by role, and the current distributions by relpath."""
    root, db = tmp_path / "collection", tmp_path / "catalog.db"
    plan: dict[str, tuple[dict[str, float], str]] = {}  # relpath -> (emotions, model)
    plan[f"{EVIL_FOLDER}/uniform.jpg"] = (UNIFORM, "tiny/a")
    plan["normal/one-hot.jpg"] = (_one_hot("awe"), "tiny/a")
    plan["root.jpg"] = (_skewed(3), EVIL_MODEL)
    # Both 2 bits of entropy exactly; the smaller margin (b: 0) is less certain.
    plan["normal/tie-a.jpg"] = (_dist([1 / 2] + [1 / 8] * 4 + [0] * 4), "tiny/a")
    plan["normal/tie-b.jpg"] = (_dist([1 / 4] * 4 + [0] * 5), "tiny/a")
    for i in range(21):
        plan[_relpath(i)] = (_skewed(i), "tiny/a" if i % 2 else EVIL_MODEL)
    shas = {
        rel: _image(root / rel, (10 * k % 256, 80, 200 - 7 * k), (400, 300) if k == 0 else (40, 30))
        for k, rel in enumerate([*plan, "normal/broken.jpg"])
    }
    with open_catalog(db) as cat:
        cid = cat.ensure_collection(root)
        run = cat.start_run({}, "tiny/a", None)
        states = [
            FileState(r, (root / r).stat().st_size, (root / r).stat().st_mtime_ns, sha)
            for r, sha in shas.items()
        ]
        ids = cat.record_files(cid, run, states)
        items = []
        for k, (rel, (emotions, model)) in enumerate(plan.items()):
            dominant = max(EMOTIONS, key=lambda e: emotions[e])
            alt = _alt_text(k)
            adapter = "spring" if k % 4 == 0 else None
            prov = _provenance(model, adapter)
            items.append((ids[rel], Annotation(alt, "Desc.", emotions, dominant, "Why.", prov)))
        cat.add_annotations(run, items)
        cat.record_failures([(ids["normal/broken.jpg"], EVIL_REASON)])
        cat.finish_run(run, "completed", {})
        correct(cat, shas[_relpath(1)][:16], {"emotion": "fear"}, "ana")
        approve(cat, [shas[_relpath(2)][:16]], "ana")
        _write_metrics(tmp_path / "adapters" / "spring", HISTORY)
        for name in ("spring", "lost"):
            cat.register_adapter(
                name=name,
                path=str(tmp_path / "adapters" / name),
                content_hash=name * 4,
                base_model="tiny/a",
                family="idefics3",
                metrics={},
                training_samples=3,
            )
    current = {rel: emotions for rel, (emotions, _) in plan.items()}
    current[_relpath(1)] = _one_hot("fear")
    return {"db": db, "root": root, "plan": plan, "current": current}


def _report(db: Path, out: Path) -> CliRunner:
    result = CliRunner().invoke(app, ["report", "--catalog", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.stderr and out.is_file()
    assert not out.with_name(out.name + ".partial").exists()
    return result


def _open(browser, path: Path):
    """The page, and every request it made, and every CSP violation it reported."""
    page = browser.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.blockedURI));"
    )
    page.goto(path.as_uri(), wait_until="load")
    return page, requests, dialogs


def _data(page, name: str):
    return page.evaluate(f"JSON.parse(document.getElementById('data-{name}').textContent)")


def test_report_opens_offline_and_requests_nothing_but_itself(catalog, tmp_path, browser):
    out = tmp_path / "report.html"
    _report(catalog["db"], out)
    page, requests, dialogs = _open(browser, out)
    try:
        assert requests and requests[0] == out.as_uri()
        assert all(u == out.as_uri() or u.startswith("data:") for u in requests), requests
        assert page.evaluate("window.__violations") == []
        # Nothing could ask for more later (a CSP may have blocked it before any request).
        refs = page.evaluate(
            "[...document.querySelectorAll('[src],[href],link,iframe,object,embed')]"
            ".map(e => e.getAttribute('src') || e.getAttribute('href') || e.tagName)"
        )
        assert all(r.startswith(("data:", "#")) for r in refs), refs
        assert page.locator("section svg").count() >= 6  # the charts are inline SVG
        scripts = "document.querySelectorAll('script:not([type=\"application/json\"])').length"
        assert page.evaluate(scripts) == 0
        assert dialogs == []
    finally:
        page.close()


def test_chart_data_equals_the_catalog_and_artnote_status(catalog, tmp_path, browser):
    out = tmp_path / "report.html"
    _report(catalog["db"], out)
    status = CliRunner().invoke(app, ["status", "--json", "--catalog", str(catalog["db"])])
    assert status.exit_code == 0, status.output
    expected_counts = json.loads(status.stdout)
    failures = expected_counts.pop("failures")
    current, plan = catalog["current"], catalog["plan"]
    page, _, _ = _open(browser, out)
    try:
        data = {name: _data(page, name) for name in DATA_IDS}
        adapter = _data(page, "adapter-1")
        adapter_note = page.locator("#adapters").inner_text()
    finally:
        page.close()
    assert data["status"]["counts"] == expected_counts
    assert data["status"]["review"] == {"draft": len(plan) - 2, "corrected": 1, "approved": 1}
    assert data["failures"]["total"] == len(failures) == 1
    assert data["failures"]["by_reason"] == [{"reason": EVIL_REASON, "files": 1}]

    sums = [sum(d[e] for d in current.values()) for e in EMOTIONS]
    assert data["emotions"]["labels"] == list(EMOTIONS)
    assert data["emotions"]["sums"] == pytest.approx(sums)
    dominant = [sum(max(EMOTIONS, key=d.get) == e for d in current.values()) for e in EMOTIONS]
    assert data["emotions"]["dominant"] == dominant and sum(dominant) == len(plan)

    by_folder = {}
    for rel, dist in current.items():
        row = by_folder.setdefault(folder_of(rel), [0, [0.0] * len(EMOTIONS)])
        row[0] += 1
        row[1] = [a + dist[e] for a, e in zip(row[1], EMOTIONS, strict=True)]
    got = {f["folder"]: f for f in data["folders"]["folders"]}
    assert set(got) == {EVIL_FOLDER, MATH_FOLDER, "normal", "."}
    assert data["folders"]["other"] is None
    for name, (n, folder_sums) in by_folder.items():
        assert got[name]["images"] == n and got[name]["sums"] == pytest.approx(folder_sums)

    lengths = [len(_alt_text(k)) for k in range(len(plan))]
    alt = data["alt-text"]
    assert sum(alt["counts"]) == len(plan) and alt["edges"][-1] > max(lengths)
    assert alt["over"] == {str(m): sum(n > m for n in lengths) for m in (125, 250)}

    mix = {(m["model"], m["adapter_name"]): m["images"] for m in data["provenance"]}
    want: dict = {}
    for k, (_, model) in enumerate(plan.values()):
        key = (model, "spring" if k % 4 == 0 else None)
        want[key] = want.get(key, 0) + 1
    assert mix == want

    assert adapter["name"] == "spring"
    assert adapter["series"]["val_loss"] == [[1, 1.5], [2, 1.25]]
    assert adapter["series"]["alt_text meteor"] == [[2, 0.1]]  # a null is no point
    assert adapter["series"]["explanation bleu4"] == [[1, 0.02]]
    assert "description bleu4" not in adapter["series"]
    assert "lost" in adapter_note and "no metrics.json" in adapter_note


def test_hostile_names_show_as_text_and_never_run(catalog, tmp_path, browser):
    out = tmp_path / "report.html"
    _report(catalog["db"], out)
    html = out.read_text(encoding="utf-8")
    assert EVIL_FOLDER not in html and "<b onmouseover" not in html
    assert "window.pwned=2</script>" not in html
    page, requests, dialogs = _open(browser, out)
    try:
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"], b').length") == 0
        assert dialogs == [] and not any(u.endswith("/x") for u in requests)
        assert EVIL_FOLDER in page.locator("#folders table").inner_text()
        assert EVIL_REASON in page.locator("#failures table").first.inner_text()
        assert EVIL_MODEL in page.locator("#provenance table").inner_text()
        # SVG labels: matplotlib escaped them, and did not read `$...$` as mathtext
        svg_text = page.evaluate(
            "[...document.querySelectorAll('#folders svg text, #provenance svg text')]"
            ".map(t => t.textContent).join('\\n')"
        )
        assert EVIL_FOLDER in svg_text and "evil</script><script>window.pwned=2" in svg_text
        assert MATH_FOLDER in svg_text
        models = [m["model"] for m in _data(page, "provenance")]
        assert EVIL_MODEL in models  # the JSON's escaping round-trips exactly
    finally:
        page.close()


def test_least_certain_lists_uniform_first_ties_by_margin_with_thumbnails(
    catalog, tmp_path, browser
):
    gone, broken = _relpath(4), _relpath(5)
    (catalog["root"] / gone).unlink()  # missing on disk: a placeholder
    (catalog["root"] / broken).write_bytes(b"not a jpeg")  # unreadable: a placeholder
    out = tmp_path / "report.html"
    _report(catalog["db"], out)
    page, _, _ = _open(browser, out)
    try:
        listed = _data(page, "uncertain")
        rows = page.locator("#uncertain tr").all()[1:]
        sizes = page.evaluate(
            "[...document.querySelectorAll('#uncertain img')].map(i => "
            "[i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])"
        )
        placeholders = page.locator("#uncertain .placeholder").count()
    finally:
        page.close()
    scored = {rel: certainty([d[e] for e in EMOTIONS]) for rel, d in catalog["current"].items()}
    ranked = sorted(scored, key=lambda r: (-round(scored[r][0], 9), round(scored[r][1], 9), r))
    assert len(listed) == len(rows) == 20
    assert listed[0]["relpath"] == f"{EVIL_FOLDER}/uniform.jpg"
    assert listed[0]["entropy"] == pytest.approx(math.log2(len(EMOTIONS)), abs=1e-4)
    assert [i["relpath"] for i in listed] == ranked[:20]
    order = [i["relpath"] for i in listed]
    assert "normal/one-hot.jpg" not in order  # entropy 0
    assert order.index("normal/tie-b.jpg") + 1 == order.index("normal/tie-a.jpg")
    shown = {i["relpath"] for i in listed}
    assert placeholders == len(shown & {gone, broken}) == 2
    assert len(sizes) == 20 - placeholders
    assert all(w <= 160 and h <= 160 and src == "data:image/jpeg;base64" for w, h, src in sizes)
    assert [160, 120, "data:image/jpeg;base64"] in sizes  # the 400x300 image, scaled down


def test_empty_catalog_writes_a_report_that_notes_missing_metrics(tmp_path, browser):
    db = tmp_path / "empty.db"
    with open_catalog(db) as cat:
        (tmp_path / "bad" / "final").mkdir(parents=True)
        (tmp_path / "bad" / "final" / "metrics.json").write_text("{not json", encoding="utf-8")
        for name in ("gone", "bad"):
            cat.register_adapter(
                name=name,
                path=str(tmp_path / name),
                content_hash="0" * 16,
                base_model="tiny/a",
                family="idefics3",
                metrics={},
                training_samples=0,
            )
    out = tmp_path / "out" / "empty.html"
    out.parent.mkdir()
    _report(db, out)
    page, requests, _ = _open(browser, out)
    try:
        data = {name: _data(page, name) for name in DATA_IDS}
        notes = page.locator("#adapters .note").all_inner_texts()
    finally:
        page.close()
    assert all(u == out.as_uri() for u in requests)
    assert data["status"]["counts"]["images"] == 0
    assert data["emotions"]["sums"] == [0.0] * len(EMOTIONS)
    assert data["uncertain"] == [] and data["provenance"] == []
    assert data["folders"] == {"labels": list(EMOTIONS), "folders": [], "other": None}
    assert len(notes) == 2
    assert "no metrics.json" in notes[0] and "cannot read" in notes[1]


def test_a_missing_catalog_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["report", "--catalog", str(tmp_path / "nope.db"), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "nope.db" in result.stderr
    assert not out.exists() and not (tmp_path / "nope.db").exists()


def test_helpers():
    assert folder_of("a.jpg") == "." and folder_of("x/y/z.jpg") == "x"
    assert certainty([0.0] * 9) is None
    entropy, margin = certainty([2.0, 1.0, 1.0])  # normalised first
    assert entropy == pytest.approx(1.5) and margin == pytest.approx(0.25)
    text = str(data_json({"k": "</script><!-- & >"}))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"k": "</script><!-- & >"}
