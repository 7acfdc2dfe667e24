"""Shared fixtures: tiny random models built once per session, the sample paintings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def art_dir() -> Path:
    env = os.environ.get("ARTNOTE_ART_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "art"


@pytest.fixture(scope="session")
def art_paths() -> list[Path]:
    paths = sorted(art_dir().glob("*.jpg"))
    if len(paths) < 8:
        pytest.fail(f"the sample paintings are missing from {art_dir()} (set ARTNOTE_ART_DIR)")
    return paths


@pytest.fixture(scope="session")
def art_images(art_paths):
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in art_paths]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{'llava': folder, 'smolvlm': folder}: tiny random models, built offline once."""
    from artnote.model.tiny import build_tiny_model

    base = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny_model(base / f, f) for f in ("llava", "smolvlm")}


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One ONNX export cache for the CLI tests: each tiny model is exported once per session."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def art_copy(tmp_path, art_paths) -> Path:
    """A writable copy of the eight paintings."""
    folder = tmp_path / "collection"
    folder.mkdir()
    for p in art_paths:
        shutil.copy2(p, folder / p.name)
    return folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads the user's config or catalog, or reaches the hub."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(tmp_path / "cache"))
    for var in list(os.environ):
        if var.startswith("ARTNOTE_") and var not in ("ARTNOTE_ART_DIR", "ARTNOTE_CACHE_DIR"):
            monkeypatch.delenv(var, raising=False)
