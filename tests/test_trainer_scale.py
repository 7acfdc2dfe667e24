"""The trainer at scale: the frozen-feature cache, flat memory, float32 masters on a
bf16 base, the scanner's features, the schedule and the answer cap."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.model.encoder import project_features
from trainer.context import make_context
from trainer.data import CuratedImage, Sample, samples_from
from trainer.finetune import finetune
from trainer.hyperparameters import Hyperparameters, learning_rate, resolve_hyperparameters
from trainer.objectives import Objective

ROOT = Path(__file__).resolve().parents[1]


def _settings(model_dir, encoder: str = "torch", cache_gb: float = 20.0) -> Settings:
    s = Settings()
    s.model.name, s.model.device, s.model.encoder = str(model_dir), "cpu", encoder
    s.train.feature_cache_gb = cache_gb
    s.train.loader_workers = 0  # in-process: the tower-call counter sees every call
    return s


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _curated(art_paths, n: int) -> list[CuratedImage]:
    return [
        CuratedImage(
            str(art_paths[i]),
            _sha(art_paths[i]),
            description=f"Painting number {i} with a sea.",
            emotions={EMOTIONS[i % len(EMOTIONS)]: 1.0},
        )
        for i in range(n)
    ]


def _count_tower_calls(monkeypatch) -> list[int]:
    """Calls of the vision tower, per finetune run (a hook on every model loaded)."""
    import trainer.finetune as ft

    calls: list[int] = []
    real = ft.load_model

    def load(settings):
        loaded = real(settings)
        tower = loaded.model.model.vision_model
        tower.register_forward_hook(lambda *_: calls.append(1))
        return loaded

    monkeypatch.setattr(ft, "load_model", load)
    return calls


@pytest.mark.slow
def test_second_epoch_and_second_run_skip_the_vision_tower(
    tiny_models, art_paths, tmp_path, monkeypatch
):
    curated = _curated(art_paths, 3)  # fewer than 4 images: no validation, only training
    hp = Hyperparameters(epochs=2, lr=5e-3, batch_size=2)
    calls = _count_tower_calls(monkeypatch)
    per_step: list[int] = []
    cached = finetune(
        curated,
        _settings(tiny_models["smolvlm"]),
        hp,
        tmp_path / "a",
        progress=False,
        on_step=lambda step: per_step.append(len(calls)),
    )
    steps_per_epoch = cached.steps // 2
    first_epoch = per_step[steps_per_epoch - 1]
    assert first_epoch == 3 and cached.encoded == 3  # once per image, not per sample
    assert per_step[-1] == first_epoch  # the second epoch ran the tower zero times

    calls.clear()
    again = finetune(curated, _settings(tiny_models["smolvlm"]), hp, tmp_path / "b", progress=False)
    assert calls == [] and again.encoded == 0  # a second run on the same images
    assert again.losses == cached.losses

    calls.clear()
    uncached = finetune(
        curated,
        _settings(tiny_models["smolvlm"], cache_gb=0),
        hp,
        tmp_path / "c",
        progress=False,
    )
    # every sample's image, every epoch (twins within one batch once)
    assert len(calls) == uncached.encoded >= 2 * 3
    # Without the cache the features are still rounded to float16: the same numbers.
    assert uncached.losses == pytest.approx(cached.losses, rel=1e-5)


def test_the_cache_keeps_under_its_cap_dropping_the_least_recently_used(tmp_path):
    from trainer.features import FeatureCache, Prepared

    item = Prepared(
        torch.zeros((1, 5), dtype=torch.long),
        torch.zeros((1, 5), dtype=torch.bool),
        torch.zeros((64, 32), dtype=torch.float16),
    )
    one = FeatureCache(tmp_path, "k", 10**9)
    one.put("a" * 64, item)
    size = one.size()
    cache = FeatureCache(tmp_path, "k", int(size * 2.5))
    for name in "bcd":
        cache.put(name * 64, item)
        assert cache.get("a" * 64) is not None  # read: most recently used
    cache.evict()
    assert cache.size() <= int(size * 2.5)
    assert cache.get("a" * 64) is not None and cache.get("b" * 64) is None
    got = cache.get("d" * 64)
    assert got is not None and torch.equal(got.frozen, item.frozen)
    # A damaged file is computed again, not trusted.
    cache.path("d" * 64).write_bytes(b"garbage")
    assert cache.get("d" * 64) is None and not cache.path("d" * 64).exists()


_MEMORY_CHILD = textwrap.dedent(
    """
    import hashlib, json, resource, sys
    from pathlib import Path
    from artnote.config import Settings
    from trainer.data import CuratedImage
    from trainer.finetune import Hyperparameters, finetune

    model, folder, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    s = Settings()
    s.model.name, s.model.device, s.model.encoder = model, "cpu", "torch"
    curated = [
        CuratedImage(str(p), hashlib.sha256(p.read_bytes()).hexdigest(), alt_text="A picture.")
        for p in sorted(folder.glob("*.png"))
    ]
    hp = Hyperparameters(epochs=1, batch_size=4, val_fraction=0.0, eval_generate=False)
    result = finetune(curated, s, hp, out, progress=False)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_kb": peak_kb, "peak_decoded": result.peak_decoded,
                      "steps": result.steps, "encoded": result.encoded}))
    """
)


def _images(folder: Path, n: int) -> Path:
    folder.mkdir()
    gen = torch.Generator().manual_seed(n)
    for i in range(n):
        pixels = torch.randint(0, 256, (192, 256, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tiny_models, tmp_path):
    results = {}
    for n in (40, 400):
        folder = _images(tmp_path / f"images-{n}", n)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _MEMORY_CHILD,
                str(tiny_models["smolvlm"]),
                str(folder),
                str(tmp_path / f"run-{n}"),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
    small, large = results[40], results[400]
    assert large["steps"] == 100 and large["encoded"] == 400
    assert large["rss_kb"] <= 1.3 * small["rss_kb"], results
    # Decoded images alive in the training process: never more than one batch.
    assert large["peak_decoded"] <= 4 and small["peak_decoded"] <= 4, results


def test_norm_gains_learn_on_a_bf16_base_at_a_small_learning_rate(tiny_models, art_paths, tmp_path):
    # The problem: a bf16 gain at 1.0 does not move under AdamW at lr 1e-5 (spacing 2^-7).
    held = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = torch.optim.AdamW([held], lr=1e-5, weight_decay=0.0)
    for _ in range(3):
        held.grad = torch.ones_like(held)
        opt.step()
    assert torch.equal(held.detach(), torch.ones(8, dtype=torch.bfloat16))

    settings = _settings(tiny_models["smolvlm"])
    settings.model.dtype = "bfloat16"
    settings.generation.alt_text_tokens = settings.generation.description_tokens = 4
    settings.generation.explanation_tokens = 4
    hp = Hyperparameters(epochs=3, lr=1e-5, batch_size=2, warmup_fraction=0.0)
    # 5 images: one is held out, so validation (the scanner's path, float32 masters on a
    # bf16 base) runs each epoch too
    result = finetune(_curated(art_paths, 5), settings, hp, tmp_path / "bf16", progress=False)
    assert result.metrics["epoch"] == 3 and result.metrics["images"] == 1
    assert all(torch.isfinite(torch.tensor(result.metrics["val_loss"])) for _ in [0])
    saved = load_file(str(result.final_dir / "adapter.safetensors"))
    gains = {k: v for k, v in saved.items() if "post_attention_layernorm" in k}
    assert gains and all(v.dtype == torch.float32 for v in gains.values())
    from artnote.config import ModelSettings
    from artnote.model.load import load_model

    base = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    start = dict(base.model.named_parameters())
    moved = [
        float((v - start[k].detach().float()).abs().max()) for k, v in gains.items() if k in start
    ]
    assert moved and max(moved) > 1e-6, moved  # learned, although each update is ~1e-5
    assert all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize("quantization", ("8bit", "4bit"))
def test_a_quantized_base_trains_float32_masters_on_a_gpu(
    tiny_models, art_paths, tmp_path, quantization
):
    """The bitsandbytes path: the one kind of test that skips under CI (no CI GPU)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (bitsandbytes quantization is CUDA only)")
    pytest.importorskip("bitsandbytes")
    settings = _settings(tiny_models["llava"])
    settings.model.device, settings.model.quantization = "cuda", quantization
    hp = Hyperparameters(epochs=3, lr=1e-5, batch_size=2, warmup_fraction=0.0)
    result = finetune(_curated(art_paths, 2), settings, hp, tmp_path / "q", progress=False)
    saved = load_file(str(result.final_dir / "adapter.safetensors"))
    gains = {k: v for k, v in saved.items() if "post_attention_layernorm" in k}
    assert gains and all(v.dtype == torch.float32 for v in gains.values())
    from artnote.config import ModelSettings
    from artnote.model.load import load_model

    base = load_model(ModelSettings(name=str(tiny_models["llava"]), device="cpu"))
    start = {k: p.detach().float() for k, p in base.model.named_parameters()}
    assert any(float((v - start[k]).abs().max()) > 1e-6 for k, v in gains.items() if k in start)
    assert all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize("family", ("llava", "smolvlm", "artgpt4"))
def test_training_features_are_the_scanners(
    tiny_models, art_paths, onnx_cache, monkeypatch, family
):
    """What a sample's image becomes in training (frozen features from the stream, cached
    in float16, through the projector) is what the scan feeds the language model: the same
    ONNX encoder in the same precision (int8 on the CPU), within float16 rounding."""
    from artnote.config import ModelSettings
    from artnote.model.load import load_model

    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    settings = _settings(tiny_models[family], encoder="onnx")
    loaded = load_model(ModelSettings(name=str(tiny_models[family]), device="cpu"))
    ctx = make_context(loaded, settings, 160)
    assert ctx.encoder.name in ("onnx-int8", "onnx")
    sample = Sample(str(art_paths[0]), _sha(art_paths[0]), "alt_text", text="A painting.")
    ((_, (prepared,)),) = list(ctx.stream.batches([sample], [[0]]))
    with torch.no_grad():
        (trained,) = project_features(loaded, [prepared.frozen])
    enc = ctx.objective.format.encode_prefix(ctx.objective.prefix, [ctx.decode(sample.image_path)])
    (scanned,) = ctx.annotator.encoder.encode(enc.pixels)
    assert ctx.annotator.encoder is ctx.encoder
    assert torch.equal(prepared.input_ids, enc.input_ids)
    error = float((trained - scanned).norm() / scanned.norm())
    assert error < 2e-3, error  # float16 rounding of the frozen features, no more
    # and not vacuous: the torch encoder's features differ from the int8 scanner's
    if ctx.encoder.name == "onnx-int8":
        from artnote.model.encoder import TorchEncoder

        (exact,) = TorchEncoder(loaded).encode(enc.pixels)
        assert float((exact - scanned).norm() / scanned.norm()) > error


def test_answers_are_capped_and_a_lead_never_doubles(tiny_models):
    from artnote.config import ModelSettings
    from artnote.model.load import load_model

    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    objective = Objective(loaded, max_answer_tokens=12)
    long = Sample("p", "s", "description", text=" ".join(["sea"] * 400))
    assert len(objective.answer_ids(long)[1]) == 12
    # An explanation whose lead names another emotion (approved before the emotion was
    # corrected): its lead is dropped, never asked after the prompt's own lead.
    sample = Sample(
        "p", "s", "explanation", text="It makes me feel awe because of the sky.", dominant="fear"
    )
    _, answer = objective.answer_ids(sample)
    text = loaded.processor.tokenizer.decode(answer)
    assert "feel" not in text and "of the sky" in text


def test_the_artgpt4_recipe_is_the_authors_schedule():
    hp = resolve_hyperparameters({}, recipe="artgpt4")
    assert (hp.lr, hp.min_lr, hp.warmup_steps, hp.warmup_start_lr, hp.weight_decay) == (
        3e-5, 1e-5, 200, 1e-6, 0.05,
    )  # fmt: skip
    total = 1000
    assert learning_rate(0, total, hp) == pytest.approx(1e-6 + (3e-5 - 1e-6) / 200)
    assert learning_rate(199, total, hp) == pytest.approx(3e-5)
    assert learning_rate(200, total, hp) == pytest.approx(3e-5)
    assert learning_rate(total, total, hp) == pytest.approx(1e-5)
    assert resolve_hyperparameters({"lr": 5e-5}, recipe="artgpt4").lr == 5e-5  # a flag wins


def test_metrics_history_and_plot_are_kept(tiny_models, art_paths, tmp_path):
    curated = _curated(art_paths, 4)
    hp = Hyperparameters(epochs=2, lr=5e-3, batch_size=4, val_fraction=0.25, eval_generate=False)
    result = finetune(
        curated, _settings(tiny_models["smolvlm"]), hp, tmp_path / "run", progress=False
    )
    saved = json.loads((result.final_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in saved["history"]] == [1, 2]
    assert all("val_loss" in m and "emotion_kl" in m for m in saved["history"])
    assert saved["val_loss"] == saved["history"][-1]["val_loss"]
    png = result.final_dir / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert samples_from(curated)  # sanity: the run had samples


def test_an_image_deleted_or_replaced_since_curation_is_left_out(tiny_models, art_paths, tmp_path):
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    copies = [shutil.copy2(p, folder / p.name) for p in art_paths[:3]]
    curated = _curated(copies, 3)
    Path(copies[0]).unlink()  # deleted since it was curated
    shutil.copy2(art_paths[5], copies[1])  # replaced by another picture: another sha256
    hp = Hyperparameters(epochs=1, lr=5e-3, batch_size=2)
    settings = _settings(tiny_models["smolvlm"])
    result = finetune(curated, settings, hp, tmp_path / "run", progress=False)
    assert set(result.left_out_images) == {curated[0].sha256, curated[1].sha256}
    assert "changed since it was curated" in result.left_out_images[curated[1].sha256]
    assert result.encoded == 1 and result.losses  # the third image trained
    from trainer.context import make_context  # noqa: F401 (the cache holds only that image)
    from trainer.features import _files

    cached = [p.stem for _, _, p in _files(tmp_path / "cache" / "features")]
    assert cached == [curated[2].sha256]
