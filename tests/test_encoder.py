"""ONNX encoder: equal to the torch reference, cached by weights, and a quiet fallback."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch

from artnote.config import GenerationSettings, ModelSettings
from artnote.errors import ConfigError
from artnote.model import encoder as enc_mod
from artnote.model import inputs
from artnote.model.annotate import Annotator
from artnote.model.encoder import OnnxEncoder, TorchEncoder, cache_dir, make_encoder
from artnote.model.families import projector
from artnote.model.load import load_model

FAMILIES = ("llava", "smolvlm")
SHORT = GenerationSettings(alt_text_tokens=6, description_tokens=10, explanation_tokens=6)


def _load(path):
    return load_model(ModelSettings(name=str(path), device="cpu"))


def _pixels(loaded, images):
    prefix = inputs.field_parts(loaded.processor, "alt_text").prefix
    return inputs.pixel_inputs(inputs.encode_prefix(loaded.processor, prefix, images))


def _fallback_warnings(caplog):
    return [
        r for r in caplog.records if r.name == enc_mod.__name__ and r.levelno >= logging.WARNING
    ]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def onnx_cache(shared_cache, monkeypatch):
    """One export per family for the equality tests (conftest gives each test its own cache)."""
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(shared_cache))
    return shared_cache


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_embeddings_equal_torch_on_paintings(tiny_models, art_images, onnx_cache, family):
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx")
    assert isinstance(encoder, OnnxEncoder) and encoder.name == "onnx"
    assert encoder.provider == "CPUExecutionProvider"
    if enc_mod._opset(loaded.device) == enc_mod.OPSET_CPU_ATTENTION:  # onnxruntime >= 1.23
        ops = {node.op_type for node in onnx.load(str(encoder.path)).graph.node}
        assert "Attention" in ops, ops  # ONNX's fused attention, not MatMul-Softmax-MatMul
    pixels = _pixels(loaded, art_images)
    want = TorchEncoder(loaded).encode(pixels)
    got = encoder.encode(pixels)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    assert all(g.dtype == loaded.dtype for g in got)
    assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) <= 1e-4
    if family == "smolvlm":
        # The wide Sakai screen splits into fewer tiles than the others: the batch mixes
        # tile counts, padding tiles are dropped and the output is split back per image.
        assert pixels["pixel_values"].shape[:2] == (8, 5)
        assert sorted({g.shape[0] for g in got}) == [12, 20]
        # One image alone gives the same embeddings as inside the mixed batch.
        alone = encoder.encode(_pixels(loaded, art_images[5:6]))[0]
        assert torch.allclose(alone, got[5], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_annotations_agree_between_onnx_and_torch(tiny_models, art_images, onnx_cache, family):
    loaded = _load(tiny_models[family])
    images = art_images[3:7]  # includes the 3-tile Sakai
    by_torch = Annotator(loaded, SHORT, encoder="torch").annotate(images)
    by_onnx = Annotator(loaded, SHORT, encoder="onnx").annotate(images)
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert (a.alt_text, a.description, a.explanation) == (
            b.alt_text,
            b.description,
            b.explanation,
        )
        assert a.dominant_emotion == b.dominant_emotion
        got, want = list(a.emotions.values()), list(b.emotions.values())
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
        assert (a.provenance.encoder, b.provenance.encoder) == ("onnx", "torch")


@pytest.mark.slow
def test_changed_revision_or_projector_makes_a_new_export(tiny_models, art_images, capfd):
    loaded = _load(tiny_models["llava"])
    first = make_encoder(loaded, "onnx")
    assert first.exported and first.path.is_file()
    assert "exporting the vision encoder of" in capfd.readouterr().err

    again = make_encoder(loaded, "onnx")
    assert not again.exported and again.path == first.path
    assert "exporting" not in capfd.readouterr().err

    loaded.revision = "another-revision"
    other = make_encoder(loaded, "onnx")
    assert other.exported and other.path != first.path

    # An adapter retrains the projector: the cached export must not be reused, and an
    # encoder made before the change must notice it on its next batch.
    pixels = _pixels(loaded, art_images[:2])
    before, old_path = other.encode(pixels), other.path
    with torch.no_grad():
        projector(loaded.model, loaded.family).linear_1.bias.add_(0.5)
    after = other.encode(pixels)
    assert other.exported and other.path not in (old_path, first.path)
    want = TorchEncoder(loaded).encode(pixels)
    assert not torch.allclose(after[0], before[0])
    assert max(float((g - w).abs().max()) for g, w in zip(after, want, strict=True)) <= 1e-4
    fresh = make_encoder(loaded, "onnx")
    assert not fresh.exported and fresh.path == other.path
    exports = sorted(p.name for p in (cache_dir() / "onnx").iterdir())
    assert len(exports) == 3 and not any(n.startswith(".tmp") for n in exports), exports


def test_a_failed_export_leaves_nothing_trusted(tiny_models, monkeypatch, caplog):
    loaded = _load(tiny_models["llava"])

    def half_written(loaded, path, dtype, size, opset):
        path.write_bytes(b"not a whole model")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(enc_mod, "export_onnx", half_written)
    encoder = make_encoder(loaded, "onnx")
    assert isinstance(encoder, TorchEncoder)
    assert len(_fallback_warnings(caplog)) == 1
    assert "killed mid-export" in caplog.text
    onnx_dir = cache_dir() / "onnx"
    assert list(onnx_dir.iterdir()) == [], "nothing half-written may stay under the cache"


def test_fallback_to_torch_with_one_warning_when_ort_cannot_run(tiny_models, monkeypatch, caplog):
    import onnxruntime

    loaded = _load(tiny_models["smolvlm"])

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation"
        )

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with caplog.at_level(logging.INFO):
        encoder = make_encoder(loaded, "onnx")
    assert isinstance(encoder, TorchEncoder) and encoder.name == "torch"
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1, caplog.text
    assert "NOT_IMPLEMENTED" in warnings[0].getMessage()
    assert "torch encoder" in warnings[0].getMessage()


def test_cuda_without_onnxruntime_gpu_falls_back_before_exporting(tiny_models, monkeypatch, caplog):
    loaded = _load(tiny_models["llava"])
    loaded.device = torch.device("cuda")  # never used: the provider check comes first
    monkeypatch.setattr(enc_mod, "export_onnx", lambda *a: pytest.fail("exported anyway"))
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    encoder = make_encoder(loaded, "onnx")
    assert isinstance(encoder, TorchEncoder)
    (warning,) = _fallback_warnings(caplog)
    assert "onnxruntime-gpu" in warning.getMessage()


def test_quantized_projector_falls_back(tiny_models, monkeypatch, caplog):
    loaded = _load(tiny_models["llava"])
    layer = projector(loaded.model, loaded.family).linear_1
    layer.weight = torch.nn.Parameter(layer.weight.detach().to(torch.int8), requires_grad=False)
    monkeypatch.setattr(enc_mod, "export_onnx", lambda *a: pytest.fail("exported anyway"))
    assert isinstance(make_encoder(loaded, "onnx"), TorchEncoder)
    (warning,) = _fallback_warnings(caplog)
    assert "quantized" in warning.getMessage()


def test_unknown_encoder_is_a_config_error(tiny_models):
    with pytest.raises(ConfigError, match="onnx, torch"):
        make_encoder(_load(tiny_models["llava"]), "tensorrt")
    with pytest.raises(ConfigError, match="auto, full, int8"):
        make_encoder(_load(tiny_models["llava"]), "onnx", "fp8")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_encoder_on_cpu_is_close_to_torch(tiny_models, art_images, onnx_cache, capfd, family):
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx", "auto")  # the default: int8 on the CPU
    assert encoder.name == "onnx-int8"
    int8_file = encoder.path.with_name(enc_mod.INT8_FILE)
    ops = {node.op_type for node in onnx.load(str(int8_file)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops  # MatMul stays for Q.K^T
    assert "quantizing the vision encoder to int8" in capfd.readouterr().err
    pixels = _pixels(loaded, art_images)
    want = torch.cat(TorchEncoder(loaded).encode(pixels))
    got = torch.cat(encoder.encode(pixels))
    error = float((got - want).norm() / want.norm())
    assert 0 < error <= enc_mod.INT8_TOLERANCE, error  # quantized, and close
    again = make_encoder(loaded, "onnx", "int8")
    assert again.name == "onnx-int8" and "quantizing" not in capfd.readouterr().err
    (annotation,) = Annotator(loaded, SHORT, encoder=again).annotate(art_images[:1])
    assert annotation.provenance.encoder == "onnx-int8"
    assert make_encoder(loaded, "onnx", "full").name == "onnx"


def test_int8_copy_that_errs_too_much_is_not_used(tiny_models, monkeypatch, caplog):
    loaded = _load(tiny_models["smolvlm"])
    monkeypatch.setattr(enc_mod, "INT8_TOLERANCE", 1e-9)
    encoder = make_encoder(loaded, "onnx", "auto")
    assert isinstance(encoder, OnnxEncoder) and encoder.name == "onnx"
    (warning,) = _fallback_warnings(caplog)
    assert "int8 encoder not used" in warning.getMessage()
    assert "relative error" in warning.getMessage()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ARTNOTE_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "artnote"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "artnote"


def test_default_setting_is_onnx():
    assert ModelSettings().encoder == "onnx"
    assert ModelSettings().encoder_precision == "auto"
