"""What a scan keeps resident between its stages: ORT's arena is handed back after each
call, the one-time export's freed heap is given back, and the encoder projects ORT's
features without first copying them (bench/scan_bench.py --memory measures the RSS)."""

from __future__ import annotations

import pytest
import torch

from artnote.config import ModelSettings
from artnote.model import encoder as enc_mod
from artnote.model import inputs, onnx_cache
from artnote.model.load import load_model


@pytest.fixture
def trims(monkeypatch):
    """Calls of the heap trim, as the modules that use it see it."""
    calls: list[str] = []
    monkeypatch.setattr(onnx_cache, "trim_heap", lambda: calls.append("trim"))
    monkeypatch.setattr(enc_mod, "trim_heap", lambda: calls.append("trim"))
    return calls


def test_cpu_calls_hand_the_arena_back_and_cuda_calls_keep_it():
    options = enc_mod._run_options(torch.device("cpu"))
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert enc_mod._run_options(torch.device("cuda")) is None


def test_a_new_entry_gives_the_freed_heap_back_and_a_cached_one_does_not(tmp_path, trims):
    def make(path):
        path.write_bytes(b"graph")

    entry = tmp_path / "onnx" / "m-1"
    path, made = onnx_cache.ensure_entry(entry, "encoder.onnx", {}, make, "making", "m-")
    assert made and trims == ["trim"]
    assert onnx_cache.ensure_entry(entry, "encoder.onnx", {}, make, "making", "m-") == (
        path,
        False,
    )
    assert trims == ["trim"]


def test_onnx_encode_is_its_frozen_features_projected_exactly(
    tiny_models, art_images, trims, monkeypatch
):
    """encode projects ORT's output tensor as it is (no torch.cat of the images' features
    first): the very values project_features gives from encode_frozen, bit for bit, and the
    heap is trimmed before each batch's ORT calls on the CPU."""
    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    encoder = enc_mod.make_encoder(loaded, "onnx", "full")
    assert isinstance(encoder, enc_mod.OnnxEncoder)
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    pixels = fmt.encode_prefix(fmt.parts("alt_text").prefix, art_images[:3]).pixels
    trims.clear()
    with torch.inference_mode():
        want = enc_mod.project_features(loaded, encoder.encode_frozen(pixels))
        cats = []
        real_cat = torch.cat
        monkeypatch.setattr(torch, "cat", lambda *a, **k: cats.append(1) or real_cat(*a, **k))
        got = encoder.encode(pixels)
    assert not cats
    assert len(got) == 3 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert trims == ["trim", "trim"]  # one per batch: encode_frozen's, then encode's
