"""What a new user stumbles on (issue 12): one test per point, named after it.

Catalogs are made through the library with made-up files and annotations (no model),
so these tests are quick; the scan-side points are in test_scan_ux.py, CSV import
formats in test_import_formats.py, text cleaning in test_text_cleaning.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.emotions import EMOTIONS
from artnote.records import Annotation, Provenance

ROOT = Path(__file__).resolve().parents[1]
HOKUSAI_DRAFT = "Blue shapes over three boats."
VAN_GOGH_DRAFT = "Blue and yellow swirls over houses."


def cli(*args: object, code: int = 0, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def two_paintings(url: str, root: Path) -> dict[str, int]:
    """A catalog with Hokusai and van Gogh annotated by a (made-up) model."""
    emotions = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
    prov = Provenance("tiny", None, "idefics3", None, None, "1", "ph", {}, "torch", "cpu", 1.0)
    with open_catalog(url) as cat:
        cid = cat.ensure_collection(root)
        run = cat.start_run({}, "tiny", None)
        ids = cat.record_files(
            cid,
            run,
            [FileState("hokusai.jpg", 1, 1, "a" * 64), FileState("gogh.jpg", 1, 1, "b" * 64)],
        )
        cat.add_annotations(
            run,
            [
                (
                    ids["hokusai.jpg"],
                    Annotation(HOKUSAI_DRAFT, "Indigo forms.", emotions, "awe", "Awe.", prov),
                ),
                (
                    ids["gogh.jpg"],
                    Annotation(VAN_GOGH_DRAFT, "Swirls.", emotions, "awe", "Awe.", prov),
                ),
            ],
        )
        cat.finish_run(run, "completed", {})
    return ids


# --- 1. search finds curators' words ------------------------------------------------------


def test_search_finds_a_correction_by_a_word_only_the_correction_has(tmp_path):
    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    wave = tmp_path / "hokusai.jpg"
    corrected = "A woodblock print of a huge wave about to break over three boats."
    cli("correct", wave, "--description", corrected, "--by", "ana", "--catalog", db)
    cli("correct", tmp_path / "gogh.jpg", "--alt-text", "Swirling night sky over a village.",
        "--catalog", db)  # fmt: skip

    found = cli("search", "woodblock", "--catalog", db).stdout
    assert str(wave) in found and "[woodblock] print of a huge wave" in found
    village = cli("search", "village", "--catalog", db).stdout
    assert "Swirling night sky over a village." in village  # the corrected alt text is shown
    assert VAN_GOGH_DRAFT not in village
    assert cli("search", "swirls", "--catalog", db).stdout.count("gogh.jpg") == 1  # description
    gone = cli("search", "houses", "--catalog", db)  # only the replaced draft alt text had it
    assert gone.stdout == "" and "no matches" in gone.stderr


def test_search_follows_corrections_on_every_database(catalog_url, tmp_path):
    """The index is updated in the same transaction as the correction, on SQLite (FTS5)
    and on PostgreSQL (LIKE over the same current values)."""
    ids = two_paintings(catalog_url, tmp_path)
    with open_catalog(catalog_url) as cat:
        assert cat.search("woodblock") == [] and len(cat.search("indigo")) == 1
        cat.add_reviews(
            [(ids["hokusai.jpg"], "correction", "description", "A woodblock print.")],
            by="ana",
            source="cli",
        )
        (hit,) = cat.search("woodblock")
        assert hit["path"] == str(tmp_path / "hokusai.jpg")
        assert hit["description"] == "A woodblock print." and "woodblock" in hit["snippet"].lower()
        assert cat.search("indigo") == []  # the model's description is no longer current
        cat.add_reviews([(ids["hokusai.jpg"], "approval", None, None)], by="ben", source="cli")
        assert [h["sha256"] for h in cat.search("woodblock")] == ["a" * 64]


# --- 3. commands in the wrong folder create nothing ----------------------------------------


READ_ONLY = [
    ["status"],
    ["export", "csv"],
    ["search", "wave"],
    ["correct", "1", "--alt-text", "x"],
    ["approve", "1"],
    ["adapters", "list"],
    ["finetune", "--epochs", "1"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: "-".join(a[:2]))
def test_commands_on_a_missing_catalog_say_so_and_create_nothing(tmp_path, args):
    result = cli(*args, code=1)
    assert "no catalog at" in result.stderr and "artnote scan FOLDER" in result.stderr
    assert "--catalog" in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [], "a file was created"


def test_corrections_import_on_a_missing_catalog_creates_nothing(tmp_path):
    sheet = tmp_path / "review.csv"
    sheet.write_text("path,alt_text\r\n/x.jpg,A wave.\r\n", encoding="utf-8")
    result = cli("corrections", "import", sheet, code=1)
    assert "no catalog at" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.csv"]


def test_a_folder_passed_as_catalog_is_a_clear_error(tmp_path):
    folder = tmp_path / "collection"
    folder.mkdir()
    for args in (["status"], ["scan", folder]):
        result = cli(*args, "--catalog", folder, code=1)
        assert f"catalog {folder} is a folder" in result.stderr, result.stderr
        assert "unable to open database file" not in result.stderr
    assert list(folder.iterdir()) == []


def test_a_scan_that_fails_before_its_first_image_creates_nothing(tmp_path, tiny_models):
    art = tmp_path / "art"
    art.mkdir()
    db = tmp_path / "c.db"
    no_model = cli("scan", art, "--catalog", db, "--model", tmp_path / "no-model", code=1)
    assert "Traceback" not in no_model.output
    missing = cli("scan", tmp_path / "nowhere", "--catalog", db, code=1)
    assert "does not exist" in missing.stderr
    no_adapter = cli(
        "scan", art, "--catalog", db, "--model", tiny_models["smolvlm"], "--adapter", "spring",
        code=1,
    )  # fmt: skip
    assert "no catalog at" in no_adapter.stderr or "spring" in no_adapter.stderr
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


# --- 5. a BOM for spreadsheets, none for pipes ----------------------------------------------


def test_export_to_stdout_is_plain_and_out_files_carry_a_bom(tmp_path):
    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    stdout = cli("export", "csv", "--catalog", db).stdout
    assert stdout.startswith("path,sha256,")  # no BOM for pipes
    out = tmp_path / "review.csv"
    cli("export", "csv", "--out", out, "--catalog", db)
    assert out.read_bytes().startswith(b"\xef\xbb\xbfpath,sha256,")
    readme = (ROOT / "README.md").read_text()
    assert "export csv > " not in readme  # spreadsheet examples use --out


# --- 8. small things: version, help, settings ----------------------------------------------


def test_version():
    from artnote import __version__

    assert cli("--version").stdout.strip() == f"artnote {__version__}"


COMMANDS = [
    ["scan"], ["export"], ["status"], ["search"], ["correct"], ["approve"],
    ["corrections", "import"], ["import", "artemis"], ["adapters", "list"],
    ["catalog", "backup"], ["catalog", "check"], ["models", "tiny"], ["models", "convert-artgpt4"],
    ["selftest"], ["finetune"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_names_argument_forms_not_python_types(command):
    text = cli(*command, "--help", env={"COLUMNS": "200"}).stdout
    noise = re.findall(r"<(?:bool|str|int|float|path|list\[\w+\]|int range|float range)>", text)
    assert not noise, noise


def test_help_says_what_the_readme_says():
    scan = cli("scan", "--help", env={"COLUMNS": "200"}).stdout
    readme = (ROOT / "README.md").read_text().replace("\\|", "|")  # pipes in its tables
    assert "NAME|DIR|latest" in scan and "scan FOLDER|IMAGE [--adapter NAME|DIR|latest]" in readme
    correct = cli("correct", "--help", env={"COLUMNS": "200"}).stdout
    assert "aim for 125 characters, at most 250" in correct
    assert "aim for 125 characters, at most 250" in (ROOT / "README.md").read_text()


def test_unknown_setting_says_did_you_mean(tmp_path):
    (tmp_path / "artnote.toml").write_text('[model]\ndevise = "cpu"\n[scann]\nx = 1\n')
    result = cli("status", code=1)
    assert "unknown setting [model] devise" in result.stderr
    assert "did you mean [model] device?" in result.stderr


def test_a_wrong_type_names_the_expected_type(tmp_path):
    result = cli("status", env={"ARTNOTE_SCAN_BATCH_SIZE": "abc"}, code=1)
    assert "cannot use 'abc', expected a whole number" in result.stderr


# --- 9. who reviewed a value, and when -------------------------------------------------------


def test_exports_say_who_reviewed_each_row_and_when(tmp_path):
    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    cli("correct", tmp_path / "hokusai.jpg", "--alt-text", "A great wave.", "--by", "ana",
        "--catalog", db)  # fmt: skip
    cli("approve", tmp_path / "gogh.jpg", "--by", "ben", "--catalog", db)
    cli("approve", tmp_path / "hokusai.jpg", "--by", "cleo", "--catalog", db)
    rows = {
        r["path"]: r
        for r in csv.DictReader(io.StringIO(cli("export", "csv", "--catalog", db).stdout))
    }
    wave, gogh = rows[str(tmp_path / "hokusai.jpg")], rows[str(tmp_path / "gogh.jpg")]
    assert (wave["status"], wave["reviewed_by"]) == ("approved", "cleo")  # the newest review
    assert (gogh["status"], gogh["reviewed_by"]) == ("approved", "ben")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", wave["reviewed_at"])
    lines = cli("export", "jsonl", "--catalog", db).stdout.splitlines()
    by_path = {r["path"]: r for r in map(json.loads, lines)}
    assert by_path[str(tmp_path / "hokusai.jpg")]["reviewed_by"] == "cleo"
    assert by_path[str(tmp_path / "hokusai.jpg")]["reviewed_at"] == wave["reviewed_at"]


def test_drafts_have_no_reviewer(tmp_path):
    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    for row in csv.DictReader(io.StringIO(cli("export", "csv", "--catalog", db).stdout)):
        assert (row["status"], row["reviewed_by"], row["reviewed_at"]) == ("draft", "", "")


# --- 2. README and CI cannot drift ------------------------------------------------------------


def readme_line(section: str) -> str:
    proc = subprocess.run(
        ["bash", "-c", f'. .ci/readme.sh && readme_line "{section}"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def test_ci_runs_the_readme_install_and_test_lines_as_written():
    readme = (ROOT / "README.md").read_text()
    install, test = readme_line("Set up"), readme_line("Test")
    assert install == 'pip install -e ".[cpu]"'
    assert test == 'pip install -e ".[test,ray]" && python -m pytest -q'
    for line in (install, test):
        assert f"\n{line}" in readme  # as written there
    run = (ROOT / ".ci" / "run").read_text()
    assert 'readme_line "Set up"' in run and 'readme_line "Test"' in run
    assert 'eval "$install_line"' in run and 'eval "$test_line"' in run
    assert "pip install -q torch==2.13.0" in run  # the one machine pin, before the README's lines


def test_no_install_holds_both_onnx_runtime_packages():
    """onnxruntime and onnxruntime-gpu both provide the `onnxruntime` module: installed
    side by side, the last one wins and a GPU machine may lose its CUDA provider. The base
    install holds neither; the cpu extra one, the gpu extra the other."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def runtimes(requirements: list[str]) -> set[str]:
        names = {re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0].lower() for r in requirements}
        return names & {"onnxruntime", "onnxruntime-gpu"}

    assert runtimes(project["dependencies"]) == set()
    assert runtimes(extras["cpu"]) == {"onnxruntime"}
    assert runtimes(extras["gpu"]) == {"onnxruntime-gpu"}
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert runtimes(requirements) == set(), name  # no extra brings one in again


# --- 11. control characters in model output ------------------------------------------------


def test_control_characters_stored_before_the_fix_are_removed_at_export(tmp_path):
    """Annotations written before model text was cleaned: export cleans them, and JSON
    Lines' provenance says which fields were cleaned."""
    import sqlite3

    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    with sqlite3.connect(db) as con:  # as an older artnote stored a random model's output
        con.execute(
            "UPDATE annotations SET alt_text = ?, description = ? WHERE sha256 = ?",
            ("Blue\x1b waves\x00.", "Line one\x07.\nLine two\x7f.", "a" * 64),
        )
    table = cli("export", "csv", "--catalog", db).stdout
    rows = {r["sha256"]: r for r in csv.DictReader(io.StringIO(table))}
    assert rows["a" * 64]["alt_text"] == "Blue waves."
    assert rows["a" * 64]["description"] == "Line one.\nLine two."
    lines = cli("export", "jsonl", "--catalog", db).stdout.splitlines()
    by_sha = {r["sha256"]: r for r in map(json.loads, lines)}
    assert by_sha["a" * 64]["alt_text"] == "Blue waves."
    assert by_sha["a" * 64]["provenance"]["cleaned"] == ["alt_text", "description"]
    assert not by_sha["b" * 64]["provenance"]["cleaned"]  # clean text: nothing cleaned
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", table.replace("\r\n", "\n"))


def test_corrections_are_cleaned_of_control_characters(tmp_path):
    db = tmp_path / "c.db"
    two_paintings(str(db), tmp_path)
    cli("correct", tmp_path / "gogh.jpg", "--alt-text", "Night\x1b sky\x00.", "--catalog", db)
    rows = list(csv.DictReader(io.StringIO(cli("export", "csv", "--catalog", db).stdout)))
    assert {r["alt_text"] for r in rows} == {HOKUSAI_DRAFT, "Night sky."}


def test_a_missing_service_skips_on_a_laptop_and_fails_under_ci(tmp_path):
    """conftest.unavailable(): CI cannot hide a missing binary or service behind a skip."""
    import os
    import sys

    repo_conftest = str(ROOT / "tests" / "conftest.py")
    (tmp_path / "test_needs_server.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {repo_conftest!r})\n"
        "repo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(repo)\n\n\n"
        "def test_needs_a_server():\n    repo.unavailable('no such server here')\n"
    )
    for ci, outcome in (("", "1 skipped"), ("true", "1 failed")):
        env = {**os.environ, "CI": ci}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert outcome in proc.stdout, proc.stdout[-1500:]
        assert "no such server here" in proc.stdout
