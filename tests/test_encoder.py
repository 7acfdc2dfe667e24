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
from artnote.model import int8 as int8_mod
from artnote.model.annotate import Annotator
from artnote.model.encoder import OnnxEncoder, TorchEncoder, cache_dir, make_encoder
from artnote.model.families import projector
from artnote.model.load import load_model

FAMILIES = ("llava", "smolvlm")
SHORT = GenerationSettings(alt_text_tokens=6, description_tokens=10, explanation_tokens=6)


def _load(path):
    return load_model(ModelSettings(name=str(path), device="cpu"))


def _pixels(loaded, images):
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    return fmt.encode_prefix(fmt.parts("alt_text").prefix, images).pixels


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
def test_changed_revision_or_vision_weights_make_a_new_export(tiny_models, art_images, capfd):
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

    # Frozen weights changed in place: the cached export must not be reused, and an
    # encoder made before the change must notice it on its next batch.
    pixels = _pixels(loaded, art_images[:2])
    before, old_path = other.encode(pixels), other.path
    with torch.no_grad():
        tower = loaded.model.model.vision_tower
        next(p for n, p in tower.named_parameters() if n.endswith("weight")).add_(0.05)
    after = other.encode(pixels)
    assert other.exported and other.path not in (old_path, first.path)
    want = TorchEncoder(loaded).encode(pixels)
    assert not torch.allclose(after[0], before[0])
    assert max(float((g - w).abs().max()) for g, w in zip(after, want, strict=True)) <= 1e-4
    fresh = make_encoder(loaded, "onnx")
    assert not fresh.exported and fresh.path == other.path
    exports = sorted(p.name for p in (cache_dir() / "onnx").iterdir() if p.suffix != ".lock")
    assert len(exports) == 3 and not any(n.startswith(".") for n in exports), exports


@pytest.mark.parametrize("family", FAMILIES)
def test_a_retrained_projector_is_used_at_once_without_a_new_export(
    tiny_models, art_images, onnx_cache, family
):
    """Adapters retrain the projector; it runs live in torch after the exported frozen
    part, so the next batch uses it and nothing is exported again."""
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx", "full")
    assert isinstance(encoder, OnnxEncoder)
    pixels = _pixels(loaded, art_images[:2])
    before, path = encoder.encode(pixels), encoder.path
    with torch.no_grad():
        for p in projector(loaded.model, loaded.family).parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = encoder.encode(pixels)
    assert encoder.path == path and not make_encoder(loaded, "onnx", "full").exported
    want = TorchEncoder(loaded).encode(pixels)
    assert not torch.allclose(after[0], before[0])
    assert max(float((g - w).abs().max()) for g, w in zip(after, want, strict=True)) <= 1e-4


@pytest.mark.parametrize("family", ("llava", "smolvlm", "artgpt4"))
def test_frozen_features_projected_equal_the_whole_path(
    tiny_models, art_images, onnx_cache, family
):
    """encode == project_features(encode_frozen), in torch exactly and in ONNX Runtime:
    the split the trainer relies on (it caches encode_frozen, trains the projector)."""
    loaded = _load(tiny_models[family])
    pixels = _pixels(loaded, art_images[:2])
    reference = TorchEncoder(loaded)
    want = reference.encode(pixels)
    for encoder in (reference, make_encoder(loaded, "onnx", "full")):
        frozen = encoder.encode_frozen(pixels)
        assert len(frozen) == 2 and all(not f.requires_grad for f in frozen)
        got = enc_mod.project_features(loaded, frozen)
        tolerance = 0.0 if encoder is reference else 1e-4
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and float((g - w).abs().max()) <= tolerance
    # A model in training mode (fine-tuning) gets the same frozen features: no dropout
    # (BLIP-2's Q-Former has 0.1), and the model's own mode is left as it was.
    loaded.model.train()
    trained = reference.encode_frozen(pixels)
    assert loaded.model.training and all(m.training for m in loaded.model.modules())
    for t, f in zip(trained, reference.encode_frozen(pixels), strict=True):
        assert torch.equal(t, f)
    loaded.model.eval()
    for t, f in zip(trained, reference.encode_frozen(pixels), strict=True):
        assert torch.equal(t, f)


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
    left = [p for p in (cache_dir() / "onnx").iterdir() if p.suffix != ".lock"]  # locks stay
    assert left == [], "nothing half-written may stay under the cache"


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


def test_quantized_vision_tower_falls_back(tiny_models, monkeypatch, caplog):
    loaded = _load(tiny_models["llava"])
    tower = loaded.model.model.vision_tower
    layer = next(m for m in tower.modules() if isinstance(m, torch.nn.Linear))
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


# Relative (Frobenius) error of the int8 copy made for this CPU, against torch, measured by
# bench/int8_error.py over tiny models of seeds 0-9 x both families, on the check tile, 4
# random tiles and the eight paintings (tile by tile, and all together as below):
#   AMD EPYC, AVX2 without VNNI, 7-bit copy:  0.0125 - 0.0237 (all paintings: max 0.0213)
#   the same, 8-bit copy in ORT's exact U8U8 kernel (what a VNNI CPU computes): max 0.0164
#   the 8-bit copy in the saturating AVX2 kernel (the bug): 0.0096 - 0.2002, tiny LLaVA of
#   seed 0 (the one tested here) 0.126 on the paintings and 0.17 - 0.20 on random tiles
# The inputs are fixed (seed-0 models from conftest, the paintings, seeded random tiles), so
# the error is one number per CPU kind; 0.03 is 1.25x the largest measured, and catches the
# saturating kernel on LLaVA. INT8_TOLERANCE (0.1) stays the product's looser guard.
INT8_TEST_TOLERANCE = 0.03


def _random_tiles(loaded, count, seed):
    """`count` seeded random whole tiles as the family's processor would hand them over."""
    size = loaded.model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(seed)
    tiles = torch.rand((count, 3, size, size), generator=gen) * 2 - 1
    if loaded.family.name == "llava":
        return {"pixel_values": tiles}
    mask = torch.ones((count, 1, size, size), dtype=torch.long)
    return {"pixel_values": tiles[:, None], "pixel_attention_mask": mask}


def _int8_error(encoder, loaded, pixels):
    want = torch.cat(TorchEncoder(loaded).encode(pixels)).float()
    got = torch.cat(encoder.encode(pixels)).float()
    return float((got - want).norm() / want.norm())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_encoder_on_cpu_is_close_to_torch(tiny_models, art_images, onnx_cache, capfd, family):
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx", "auto")  # the default: int8 on the CPU
    assert encoder.name == "onnx-int8"
    # The copy for this CPU: 7-bit weights unless it has VNNI.
    assert encoder.session_path.name == int8_mod.int8_file(int8_mod.reduce_range())
    ops = {node.op_type for node in onnx.load(str(encoder.session_path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops  # MatMul stays for Q.K^T
    assert "quantizing the vision encoder to int8" in capfd.readouterr().err
    for pixels in (_pixels(loaded, art_images), _random_tiles(loaded, 4, seed=1)):
        error = _int8_error(encoder, loaded, pixels)
        # Above 1e-3: quantized (the float32 file errs by ~1e-7); below: close.
        assert 1e-3 < error <= INT8_TEST_TOLERANCE, error
    again = make_encoder(loaded, "onnx", "int8")
    assert again.name == "onnx-int8" and "quantizing" not in capfd.readouterr().err
    assert again.session_path == encoder.session_path
    (annotation,) = Annotator(loaded, SHORT, encoder=again).annotate(art_images[:1])
    assert annotation.provenance.encoder == "onnx-int8"
    assert make_encoder(loaded, "onnx", "full").name == "onnx"


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_features_of_an_image_do_not_depend_on_its_batch(
    tiny_models, art_images, onnx_cache, family
):
    """Dynamic quantization scales activations per ORT call: an image (its tiles) must not
    share a call with others, or its features, hence its text, would change with its batch
    (measured before: up to 0.045 apart on tiny LLaVA)."""
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx", "int8")
    assert encoder.name == "onnx-int8"
    with torch.inference_mode():
        alone = encoder.encode(_pixels(loaded, art_images[:1]))[0]
        batched = encoder.encode(_pixels(loaded, [art_images[0], *art_images[1:4]]))[0]
        later = encoder.encode(_pixels(loaded, [art_images[3], art_images[0]]))[1]
    assert torch.equal(alone, batched) and torch.equal(alone, later)


def test_vnni_decides_the_int8_variant(monkeypatch):
    assert int8_mod.reduce_range(frozenset({"sse4_2", "avx2", "fma", "avx512bw"}))
    assert not int8_mod.reduce_range(frozenset({"avx2", "avx512bw", "avx512_vnni"}))
    assert not int8_mod.reduce_range(frozenset({"avx2", "avx_vnni"}))  # Alder Lake and later
    monkeypatch.setattr(int8_mod, "cpu_flags", lambda: None)  # not Linux, or not x86
    assert int8_mod.reduce_range()  # unknown: the copy that cannot saturate
    assert int8_mod.INT8_FILE != int8_mod.INT8_REDUCED_FILE


def _weight_span(path):
    """Largest |int8 weight| in a quantized ONNX file."""
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    ]
    assert weights, "no int8 weights"
    return max(int(abs(w.astype("int32")).max()) for w in weights)


def test_a_cache_shared_by_both_cpu_kinds_keeps_a_copy_for_each(
    tiny_models, monkeypatch, caplog, capfd
):
    """A network home's cache is shared: each kind of CPU makes and opens its own copy."""
    loaded = _load(tiny_models["llava"])
    folder = make_encoder(loaded, "onnx", "full").path.parent
    capfd.readouterr()
    # This machine may lack VNNI, where the 8-bit copy saturates: the test is about files.
    monkeypatch.setattr(enc_mod, "INT8_TOLERANCE", 1.0)
    vnni, avx2 = frozenset({"avx2", "avx512_vnni"}), frozenset({"avx2", "fma"})
    wanted = {vnni: int8_mod.INT8_FILE, avx2: int8_mod.INT8_REDUCED_FILE}
    for turn, flags in enumerate([vnni, avx2, vnni, avx2]):
        monkeypatch.setattr(int8_mod, "cpu_flags", lambda flags=flags: flags)
        encoder = make_encoder(loaded, "onnx", "auto")
        assert encoder.name == "onnx-int8" and encoder.session_path == folder / wanted[flags]
        quantized = "quantizing the vision encoder" in capfd.readouterr().err
        assert quantized == (turn < 2), turn  # each kind once, never from the other's copy
    # 7-bit weights (-64..63) cannot saturate the u8s8 kernel's int16 sums; 8-bit ones can.
    assert _weight_span(folder / int8_mod.INT8_REDUCED_FILE) <= 64
    assert _weight_span(folder / int8_mod.INT8_FILE) > 64
    assert not _fallback_warnings(caplog), caplog.text


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


@pytest.mark.parametrize("family", FAMILIES)
def test_io_binding_gives_what_a_plain_session_run_gives(
    tiny_models, art_images, onnx_cache, family, monkeypatch
):
    """The encoder binds torch's tensors to ORT's input and output (one code path for the
    CPU and CUDA providers); on the CPU provider the result must equal session.run's."""
    loaded = _load(tiny_models[family])
    encoder = make_encoder(loaded, "onnx", "full")
    assert isinstance(encoder, OnnxEncoder)
    pixels = _pixels(loaded, art_images[:2])["pixel_values"]
    tiles = pixels.reshape(-1, *pixels.shape[-3:]) if loaded.family.tiled else pixels
    tiles = tiles[tiles.reshape(tiles.shape[0], -1).ne(0).any(dim=1)][:3]
    x = tiles.to(encoder.vision_dtype).to(encoder.export_dtype).contiguous()
    bound = torch.empty((x.shape[0], *encoder.out_shape), dtype=x.dtype)
    encoder._run_bound(x, bound)
    (plain,) = encoder.session.run([encoder.output_name], {encoder.input_name: x.numpy()})
    assert bound.shape == plain.shape
    assert torch.equal(bound, torch.from_numpy(plain))
    # The chunked path over indexed rows (each chunk gathered alone, written in place)
    # gives the same rows as one plain run over the gathered tiles.
    monkeypatch.setattr(enc_mod, "TILES_PER_CALL_CPU", 2)
    rows = torch.arange(x.shape[0]).flip(0)  # every row, out of order
    assert torch.equal(encoder._run(x, rows), torch.from_numpy(plain)[rows])
