"""`artnote eval` and finetune's defaults, through the CLI, on a collection scanned with a
tiny model that is not the configured one (the README's no-download path)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from trainer.data import curated_model
from trainer.errors import TrainerError

SHORT = {
    "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "12",
    "ARTNOTE_GENERATION_ALT_TEXT_TOKENS": "6",
    "ARTNOTE_GENERATION_EXPLANATION_TOKENS": "6",
}


@pytest.fixture
def cli(onnx_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "museum" / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    for key, value in SHORT.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "museum").mkdir()
    runner = CliRunner()

    def run(*args, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


@pytest.mark.slow
def test_finetune_trains_the_scanned_model_and_eval_repeats_its_validation(
    cli, tiny_models, art_paths, tmp_path
):
    folder = tmp_path / "collection"
    folder.mkdir()
    for p in art_paths:
        shutil.copy2(p, folder / p.name)
    tiny = tiny_models["smolvlm"]
    cli("scan", folder, "--model", tiny, "--quiet")  # not the configured default model
    cli("approve", *sorted(folder.iterdir()), "--by", "curator")
    # No --model: the model whose annotations were curated, from provenance.
    done = cli("finetune", "--epochs", "1", "--batch-size", "8", "--name", "round1", "--quiet")
    out = tmp_path / "museum" / "adapters" / "round1"  # beside the catalog, not the cwd
    assert (out / "final" / "adapter.safetensors").is_file(), done.output
    assert not (tmp_path / "adapters").exists()
    with open_catalog(tmp_path / "museum" / "catalog.db", create=False) as cat:
        (adapter,) = cat.adapters()
    assert adapter["base_model"] == str(tiny)

    written = json.loads((out / "final" / "metrics.json").read_text())
    result = cli("eval", "--adapter", "round1", "--split", "val", "--json")
    got = json.loads(result.stdout)
    assert got["adapter"] == "round1" and got["model"] == str(tiny)
    training_only = ("epoch", "train_loss", "history", "final_train_loss")
    compared = [k for k in written if k not in training_only]
    assert {"val_loss", "emotion_accuracy", "emotion_kl", "alt_text", "description"} <= set(
        compared
    )
    for key in compared:
        assert got[key] == written[key], key  # exactly: the same function, samples, batches
    # The table is what a person reads.
    table = cli("eval", "--adapter", "round1").stdout
    assert "bleu4" in table and "description" in table and "val_loss" in table
    # The base model on every curated image, for comparison.
    base = json.loads(cli("eval", "--split", "all", "--json").stdout)
    assert base["adapter"] is None and base["images"] == len(art_paths)


def test_eval_split_val_needs_an_adapter_and_a_file_names_images(cli, tmp_path):
    db = tmp_path / "museum" / "catalog.db"
    with open_catalog(db):
        pass
    result = cli("eval", "--split", "val", code=1)
    assert "needs an adapter" in result.output
    listing = tmp_path / "wanted.txt"
    listing.write_text("f" * 64 + "\n")
    result = cli("eval", "--split", listing, code=1)
    assert "no curated" in result.output or "name no curated image" in result.output


def test_annotations_of_several_models_need_model():
    rows = [{"model": "a"}, {"model": "b"}, {"model": None}]
    with pytest.raises(TrainerError, match="2 models .*--model"):
        curated_model(rows, "configured")
    assert curated_model([{"model": "a"}, {"model": None}], "configured") == "a"
    assert curated_model([{"model": None}], "configured") == "configured"


def test_finetune_out_defaults_beside_a_sqlite_catalog(tmp_path):
    from trainer.cli import data_dir

    (tmp_path / "x").mkdir()
    assert data_dir(str(tmp_path / "x" / "catalog.db")) == (tmp_path / "x").resolve()
    # PostgreSQL has no folder beside it: the cache directory ($ARTNOTE_CACHE_DIR here)
    assert data_dir("postgresql+psycopg://u@h/db") == tmp_path / "cache"
