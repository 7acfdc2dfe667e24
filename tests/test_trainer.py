"""The trainer: loss goes down, files hold only the trainable set, resume is exact, metrics."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_model import TRAINABLE

from artnote.config import Settings
from artnote.errors import ArtnoteError
from trainer import checkpoint
from trainer.data import CuratedImage, samples_from, split_by_image
from trainer.finetune import Hyperparameters, _Stop, finetune


def _settings(model_dir) -> Settings:
    s = Settings()
    s.model.name, s.model.device = str(model_dir), "cpu"
    return s


def _curated(art_paths):
    return [
        CuratedImage(
            str(art_paths[0]),
            "a",
            description="A great wave curls over boats.",
            emotions={"awe": 1.0},
        ),
        CuratedImage(
            str(art_paths[1]),
            "b",
            alt_text="A woman in a wide hat.",
            emotions={"contentment": 0.75, "awe": 0.25},
        ),
    ]


def _open(path):
    return Image.open(path).convert("RGB")


def test_loss_decreases_and_files_hold_only_trainable_tensors(tiny_models, art_paths, tmp_path):
    hp = Hyperparameters(epochs=12, lr=1e-2, batch_size=4, checkpoint_every=5)
    result = finetune(
        _curated(art_paths),
        _settings(tiny_models["smolvlm"]),
        hp,
        tmp_path / "run",
        load_image=_open,
        progress=False,
    )
    assert result.samples == 4 and result.steps == 12
    assert result.trainable_parameters == TRAINABLE["smolvlm"]
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first * 0.5, result.losses
    for folder in ("step-5", "step-10", "final"):
        d = tmp_path / "run" / folder
        for name in (
            "adapter.safetensors",
            "adapter_config.json",
            "hyperparameters.toml",
            "metrics.json",
        ):
            assert (d / name).is_file(), (folder, name)
    tensors = load_file(str(tmp_path / "run" / "final" / "adapter.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == TRAINABLE["smolvlm"]
    assert "lr = 0.01" in (tmp_path / "run" / "final" / "hyperparameters.toml").read_text()


def test_resume_after_a_crash_ends_with_the_same_weights(tiny_models, art_paths, tmp_path):
    hp = Hyperparameters(epochs=6, lr=5e-3, batch_size=1, grad_accum=2, checkpoint_every=2)
    settings = _settings(tiny_models["llava"])
    whole = finetune(
        _curated(art_paths), settings, hp, tmp_path / "whole", load_image=_open, progress=False
    )

    def crash(step):
        if step == 5:  # after the step-4 checkpoint, mid-way to the next
            raise _Stop

    with pytest.raises(_Stop):
        finetune(
            _curated(art_paths),
            settings,
            hp,
            tmp_path / "cut",
            load_image=_open,
            progress=False,
            on_step=crash,
        )
    assert checkpoint.latest_checkpoint(tmp_path / "cut").name == "step-4"
    resumed = finetune(
        _curated(art_paths),
        settings,
        hp,
        tmp_path / "cut",
        load_image=_open,
        progress=False,
        resume=True,
    )
    assert resumed.steps == whole.steps
    a = load_file(str(whole.final_dir / "adapter.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    with safe_open(str(resumed.final_dir / "adapter.safetensors"), "pt") as f:
        assert all(not k.endswith("::step") for k in f.keys())


def test_nothing_to_learn_is_a_clear_error(tiny_models, tmp_path):
    with pytest.raises(ArtnoteError, match="nothing to learn"):
        finetune(
            [],
            _settings(tiny_models["llava"]),
            Hyperparameters(),
            tmp_path,
            load_image=_open,
            progress=False,
        )


def test_samples_and_split_keep_images_whole():
    images = [
        CuratedImage(f"p{i}", f"s{i}", description="d", alt_text="a", emotions={"fear": 1.0})
        for i in range(10)
    ]
    samples = samples_from(images)
    assert len(samples) == 30
    train, val = split_by_image(samples, 0.2, seed=3)
    assert {s.sha256 for s in train}.isdisjoint({s.sha256 for s in val})
    assert len({s.sha256 for s in val}) == 2
    assert split_by_image(samples, 0.2, seed=3) == (train, val)


def test_an_explanation_alone_is_asked_with_the_current_emotion():
    only = CuratedImage(
        "p", "s", explanation="It makes me feel awe because of the sky.", dominant_emotion="awe"
    )
    (sample,) = samples_from([only])
    assert sample.field == "explanation" and sample.dominant == "awe"
    assert samples_from([CuratedImage("p", "s", explanation="no emotion known")]) == []
