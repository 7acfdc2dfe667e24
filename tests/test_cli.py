"""Commands that are not scan: selftest, models tiny, the README's quick start, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.cli import app
from artnote.config import ModelSettings
from artnote.errors import ModelError
from artnote.model.load import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_selftest_json_reports_every_family_all_true(art_paths):
    result = CliRunner().invoke(app, ["selftest", "--json", "--images", str(art_paths[0].parent)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert set(report["families"]) == {"llava", "smolvlm", "artgpt4"}
    for checks in report["families"].values():
        assert checks and all(v is True for v in checks.values()), checks
        assert {
            "load",
            "zero_init_identity",
            "annotate_batch",
            "emotions_valid",
            "adapter_round_trip",
        } <= set(checks)


def test_models_tiny_says_the_weights_are_random(tmp_path):
    result = CliRunner().invoke(app, ["models", "tiny", str(tmp_path / "m"), "--family", "llava"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.stdout
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "RANDOM" in config["artnote_note"] and config["model_type"] == "llava"


def test_quantization_needs_cuda(tiny_models):
    with pytest.raises(ModelError, match="quantization"):
        load_model(ModelSettings(name=str(tiny_models["llava"]), device="cpu", quantization="8bit"))


def test_bad_usage_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["export", "xml", "--catalog", str(tmp_path / "c.db")])
    assert result.exit_code == 2


def test_readme_quick_start_works_as_written(tmp_path, art_paths):
    """Run the README's offline quick-start block as written, in a checkout with nothing
    beside it: the paintings come from the tests' own fixtures."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"To try everything.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    work = tmp_path / "checkout"
    (work / "tests" / "fixtures").mkdir(parents=True)
    (work / "tests" / "fixtures" / "art").symlink_to(art_paths[0].parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "16"}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for command in commands:
        command = command.replace("/tmp/tiny", str(tmp_path / "tiny"))
        proc = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
    raw = (work / "annotations.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # --out: the BOM that makes Excel read UTF-8
    rows = raw.decode("utf-8-sig").splitlines()
    assert len(rows) == 9  # header + the eight paintings


def test_export_to_a_folder_that_is_not_there_is_one_line_error(tmp_path):
    from artnote.catalog import open_catalog

    open_catalog(tmp_path / "catalog.db").close()
    env = {"ARTNOTE_CATALOG": str(tmp_path / "catalog.db")}
    out = tmp_path / "no such folder" / "x.csv"
    result = CliRunner().invoke(app, ["export", "csv", "--out", str(out)], env=env)
    assert result.exit_code == 1, result.output
    assert f"cannot write {out}" in result.stderr and "Traceback" not in result.output
    assert not out.parent.exists()
