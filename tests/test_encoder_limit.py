"""bench/encoder_limit.py (smoke run at tiny size, FLOP arithmetic) and `[model]
max_image_side`: validated, handed to SmolVLM's processor, fewer tiles, its own features."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from artnote.config import ModelSettings, load_settings
from artnote.errors import ConfigError
from artnote.model import inputs
from artnote.model.load import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

SIGLIP_B16_512 = SimpleNamespace(
    model_type="idefics3_vision",
    image_size=512,
    patch_size=16,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
)


def test_tile_flops_of_siglip_b16_at_512_px():
    from encoder_limit import limit_seconds, tile_flops

    f = tile_flops(SIGLIP_B16_512)
    t, d, m = 1024, 768, 3072
    assert f["tokens"] == t
    assert f["qkv_out"] == 12 * 2 * t * 4 * d * d  # q, k, v, out: 57.98 GFLOP
    assert f["mlp"] == 12 * 2 * t * 2 * d * m  # 115.96 GFLOP
    assert f["attention"] == 12 * 4 * t * t * d  # 38.65 GFLOP
    assert f["patch_embed"] == 2 * t * 768 * d
    total = sum(v for k, v in f.items() if k != "tokens")
    assert total / 1e9 == pytest.approx(213.8, abs=0.1)
    rates = {"ort_float32": 50e9, "ort_int8": 100e9}
    linear, other = f["qkv_out"] + f["mlp"], f["attention"] + f["patch_embed"]
    assert limit_seconds(f, rates, int8=True) == pytest.approx(linear / 100e9 + other / 50e9)
    assert limit_seconds(f, rates, int8=False) == pytest.approx(total / 50e9)


@pytest.mark.slow
def test_encoder_limit_smoke(tmp_path, art_paths, monkeypatch, capsys):
    import encoder_limit

    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "limit.json"
    argv = ["--shape", "tiny", "--tiles", "2", "--repeats", "1", "--images", "3"]
    encoder_limit.main([*argv, "--max-image-side", "64", "32", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "of the limit" in printed and "GEMM rate" in printed
    r = json.loads(out.read_text())
    assert r["gemm"]["rates"]["ort_float32"] > 0 and r["gemm"]["rates"]["ort_int8"] > 0
    assert set(r["encoder"]) == {"int8", "full"}
    assert r["encoder"]["int8"]["encoder"] == "onnx-int8"
    for e in r["encoder"].values():
        assert e["fraction_of_limit"] > 0 and min(e["seconds_per_tile"]) > 0
    default, small = r["max_image_side"]
    assert small["tiles_per_image"] < default["tiles_per_image"]
    assert default["cosine_vs_first"] == pytest.approx([1.0] * 3)


# ---- [model] max_image_side ------------------------------------------------------


def test_max_image_side_setting_is_validated(tmp_path):
    assert ModelSettings().max_image_side == 0
    s = load_settings(env={"ARTNOTE_MODEL_MAX_IMAGE_SIDE": "1024"})
    assert s.model.max_image_side == 1024
    toml = tmp_path / "a.toml"
    for bad, fragment in (("-512", "max_image_side must be 0"), ('"big"', "whole number")):
        toml.write_text(f"[model]\nmax_image_side = {bad}\n")
        with pytest.raises(ConfigError, match=fragment):
            load_settings(toml, env={})


def _tiles(loaded, image) -> int:
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    pixels = fmt.encode_prefix(fmt.parts("alt_text").prefix, [image]).pixels
    return int(pixels["pixel_values"].shape[1])


def test_max_image_side_reaches_the_processor_and_cuts_tiles(tiny_models):
    image = Image.new("RGB", (100, 60), (200, 40, 10))
    default = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    small = load_model(
        ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu", max_image_side=32)
    )
    # The tiny SmolVLM: 32 px tiles, longest edge 64 by default (2x2 tiles + a global view).
    assert default.processor.image_processor.size["longest_edge"] == 64
    assert small.processor.image_processor.size["longest_edge"] == 32
    assert inputs.input_size(small.processor) == 32  # decoding shrinks images to it too
    assert _tiles(default, image) == 5 and _tiles(small, image) == 1


@pytest.mark.parametrize("side", [16, 48])
def test_max_image_side_must_be_whole_tiles(tiny_models, side):
    settings = ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu", max_image_side=side)
    with pytest.raises(ConfigError, match="multiple of the model's 32 px tile"):
        load_model(settings)


def test_max_image_side_is_ignored_with_a_warning_by_untiled_models(tiny_models, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = load_model(
            ModelSettings(name=str(tiny_models["llava"]), device="cpu", max_image_side=1024)
        )
    assert "max_image_side" in caplog.text
    assert "longest_edge" not in loaded.processor.image_processor.size


def test_features_of_another_image_side_are_cached_apart(tiny_models):
    from trainer.features import cache_key

    encoder = SimpleNamespace(
        name="onnx-int8", session_path="encoder.int8r.onnx", fingerprint="f", export_dtype=None
    )
    keys = {
        side: cache_key(
            load_model(
                ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu", max_image_side=side)
            ),
            encoder,
            "prefix",
            1000,
        )
        for side in (0, 64, 32)
    }
    assert keys[0] == keys[64]  # 64 is the tiny model's own default
    assert keys[32] != keys[0]
