"""Grounded prompting end to end: records imported, `scan --use-records`, `--reannotate`,
and the trainer asking the very same questions."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from artnote.model import prompts

SHORT = {
    "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "6",
    "ARTNOTE_GENERATION_ALT_TEXT_TOKENS": "4",
    "ARTNOTE_GENERATION_EXPLANATION_TOKENS": "4",
}
MET_COLUMNS = ["Object Number", "Title", "Artist Display Name", "Object Date", "Medium", "Image"]


@pytest.fixture
def cli(tiny_cli, monkeypatch):
    for key, value in SHORT.items():
        monkeypatch.setenv(key, value)
    return tiny_cli


@pytest.fixture
def folder(tmp_path, art_paths) -> Path:
    """Three paintings: hokusai and munch will have records, turner none."""
    folder = tmp_path / "collection"
    folder.mkdir()
    for p in art_paths:
        if p.name.startswith(("hokusai", "munch", "turner")):
            shutil.copy2(p, folder / p.name)
    return folder


def write_records(path: Path, wave_title: str) -> Path:
    rows = [
        ["JP1847", wave_title, "Katsushika Hokusai", "ca. 1830-32",
         "Woodblock print; ink and color on paper", "hokusai_the-great-wave-off-kanagawa_1831.jpg"],
        ["NG.M.00939", "The Scream", "Edvard Munch", "1893",
         "Tempera and crayon on cardboard", "munch_the-scream_1893.jpg"],
    ]  # fmt: skip
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MET_COLUMNS)
        writer.writerows(rows)
    return path


def current(db: Path) -> dict[str, dict]:
    with open_catalog(db, create=False) as cat:
        return {Path(r["path"]).name.split("_")[0]: r for r in cat.export_rows()}


def import_records(cli, path: Path) -> None:
    cli("import", "records", path, "--key", "Object Number", "--image-column", "Image")


@pytest.mark.slow
def test_use_records_grounds_the_prompts_and_reannotate_follows_records(
    cli, folder, tmp_path, monkeypatch
):
    db = tmp_path / "catalog.db"
    cli("scan", folder, "--quiet")
    plain = current(db)
    assert {r["provenance"]["prompt_hash"] for r in plain.values()} == {prompts.prompt_hash()}

    import_records(cli, write_records(tmp_path / "met.csv", "Under the Wave off Kanagawa"))
    # What the processor is given: capture every chat the prompts are rendered from.
    from transformers.processing_utils import ProcessorMixin

    seen: list[str] = []
    original = ProcessorMixin.apply_chat_template

    def capture(self, conversation, *args, **kwargs):
        text = original(self, conversation, *args, **kwargs)
        seen.append(text if isinstance(text, str) else str(text))
        return text

    monkeypatch.setattr(ProcessorMixin, "apply_chat_template", capture)
    result = cli("scan", folder, "--use-records", "--reannotate")
    assert "2 (another prompt" in result.stderr, result.stderr
    grounded = current(db)
    for painter, title, maker in (
        ("hokusai", "Under the Wave off Kanagawa", "Katsushika Hokusai"),
        ("munch", "The Scream", "Edvard Munch"),
    ):
        row = grounded[painter]
        assert row["annotation_id"] != plain[painter]["annotation_id"]
        assert row["prompt_version"] == prompts.PROMPT_VERSION + "+record"
        assert row["provenance"]["prompt_hash"] != prompts.prompt_hash()
        assert any(f"\u201c{title}\u201d" in t and f"\u201c{maker}\u201d" in t for t in seen)
    # The image without a record keeps its annotation, made with the plain prompt.
    assert grounded["turner"]["annotation_id"] == plain["turner"]["annotation_id"]
    assert not any("Turner" in t for t in seen)

    # Nothing changed: nothing to do. One title changed: that image alone.
    result = cli("scan", folder, "--use-records", "--reannotate")
    assert "another prompt" not in result.stderr
    assert {k: r["annotation_id"] for k, r in current(db).items()} == {
        k: r["annotation_id"] for k, r in grounded.items()
    }
    import_records(cli, write_records(tmp_path / "met2.csv", "The Great Wave"))
    result = cli("scan", folder, "--use-records", "--reannotate")
    assert "1 (another prompt" in result.stderr, result.stderr
    again = current(db)
    assert again["hokusai"]["annotation_id"] != grounded["hokusai"]["annotation_id"]
    assert again["munch"]["annotation_id"] == grounded["munch"]["annotation_id"]


def test_the_trainer_asks_the_scans_grounded_questions(tiny_models, folder, tmp_path):
    """Curated samples of an image with a record carry its context, and the trainer's
    prompt ids for each field equal the scanner's for the same image."""
    from conftest import annotate_files, peaked

    from artnote.catalog import open_catalog as open_cat
    from artnote.config import ModelSettings
    from artnote.corrections import approve
    from artnote.model.annotate import Annotator
    from artnote.model.load import load_model
    from trainer.data import curated_images, samples_from
    from trainer.objectives import Objective

    db = tmp_path / "catalog.db"
    ids = annotate_files(db, folder, {p.name: peaked(k, 0.5) for k, p in enumerate(
        sorted(folder.iterdir()))})  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["import", "records", str(write_records(tmp_path / "met.csv", "The Great Wave")),
         "--key", "Object Number", "--image-column", "Image", "--catalog", str(db)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open_cat(db, create=False) as cat:
        approve(cat, [str(i) for i in ids.values()], by="ana")
        rows = cat.curated()
        images = curated_images(rows, cat, use_records=True)
        plain_images = curated_images(rows, cat, use_records=False)
    contexts = {Path(im.image_path).name.split("_")[0]: im.context for im in images}
    assert "The Great Wave" in contexts["hokusai"] and "Edvard Munch" in contexts["munch"]
    assert contexts["turner"] == "" and all(im.context == "" for im in plain_images)

    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    objective, annotator = Objective(loaded), Annotator(loaded)
    samples = samples_from(images)
    assert {s.field for s in samples} == {"alt_text", "description", "explanation", "emotion"}
    for sample in samples:
        if sample.field == "emotion":
            assert objective.emotion_suffix_for(sample.context) == annotator.suffix(
                "emotion", sample.context
            )
            continue
        trained, _ = objective.answer_ids(sample)
        emotion = sample.dominant if sample.field == "explanation" else None
        assert trained == annotator.suffix(sample.field, sample.context, emotion)
        if sample.context:
            assert "Katsushika Hokusai" in annotator.tokenizer.decode(trained) or (
                "Edvard Munch" in annotator.tokenizer.decode(trained)
            )
