"""Model loading and adapter files that go wrong: dtypes, damaged files, caches, folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from artnote.config import ModelSettings
from artnote.errors import AdapterError, ArtnoteError, ModelError
from artnote.model import encoder
from artnote.model.adapters import (
    ADAPTER_FILE,
    CONFIG_FILE,
    adapters_of,
    attach_adapters,
    base_fingerprint,
    load_adapter,
    mark_trainable,
    save_adapter,
)
from artnote.model.families import projector
from artnote.model.load import QUANTIZATION_SKIP, load_model, quantization_kwargs
from artnote.model.tiny import build_tiny_model


def _load(path, dtype="float32"):
    return load_model(ModelSettings(name=str(path), device="cpu", dtype=dtype))


def _save_trained_adapter(folder, out):
    """An adapter whose every tensor differs from a fresh model's."""
    loaded = _load(folder)
    attach_adapters(loaded.model)
    trainable = set(mark_trainable(loaded.model, loaded.family))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name in trainable:
                p.copy_(torch.randn(p.shape, generator=gen))
    save_adapter(
        loaded.model, out, family=loaded.family, base_model=loaded.name, base_revision=None
    )
    return out


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


# ---- 1. the base fingerprint does not depend on the load dtype ---------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_adapter_saved_in_float32_loads_onto_the_base_in_bfloat16(tiny_models, tmp_path, dtype):
    """finetune trains in float32; a GPU scan loads the base in bfloat16 (or float16 on
    GPUs without it): the adapter must load onto either."""
    folder = tiny_models["llava"]
    _save_trained_adapter(folder, tmp_path / "ad")
    half = _load(folder, dtype=dtype)
    load_adapter(half.model, tmp_path / "ad", family=half.family, base_model=half.name)
    assert adapters_of(half.model) is not None


def test_adapter_saved_before_the_rounding_still_loads(tiny_models, tmp_path):
    folder = tiny_models["llava"]
    _save_trained_adapter(folder, tmp_path / "ad")
    fp32 = _load(folder)
    config = json.loads((tmp_path / "ad" / CONFIG_FILE).read_text())
    config["base_fingerprint"] = base_fingerprint(fp32.model, legacy=True)
    (tmp_path / "ad" / CONFIG_FILE).write_text(json.dumps(config))
    load_adapter(fp32.model, tmp_path / "ad", family=fp32.family, base_model=fp32.name)


# ---- 2. damaged weights and a failed move are one-line ModelErrors -----------------


def test_truncated_weights_are_a_model_error(tiny_models, tmp_path):
    copy = tmp_path / "half-copied"
    shutil.copytree(tiny_models["llava"], copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError) as err:
        _load(copy)
    message = str(err.value)
    assert "incomplete copy" in message and str(copy) in message and "\n" not in message


def test_out_of_memory_while_moving_the_model_is_a_model_error(tiny_models, monkeypatch):
    from transformers import PreTrainedModel

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(PreTrainedModel, "to", out_of_memory)
    with pytest.raises(ModelError, match="out of memory"):
        _load(tiny_models["llava"])


# ---- 3. a bad adapter file is refused before the model is touched ------------------


@pytest.mark.parametrize("attached", [False, True])
def test_adapter_with_one_wrong_shape_leaves_the_model_unchanged(tiny_models, tmp_path, attached):
    from safetensors.torch import load_file, save_file

    folder = tiny_models["smolvlm"]
    _save_trained_adapter(folder, tmp_path / "ad")
    path = tmp_path / "ad" / ADAPTER_FILE
    tensors = load_file(str(path))
    last = sorted(tensors)[-1]  # every other tensor would be copied before it is reached
    tensors[last] = torch.zeros(tensors[last].numel() + 1)
    save_file(tensors, str(path))

    fresh = _load(folder)
    if attached:
        attach_adapters(fresh.model)
    before = _snapshot(fresh.model)
    with pytest.raises(AdapterError, match="shape"):
        load_adapter(fresh.model, tmp_path / "ad", family=fresh.family, base_model=fresh.name)
    _assert_unchanged(fresh.model, before)
    assert (adapters_of(fresh.model) is not None) == attached


@pytest.mark.parametrize(
    "change",
    [
        lambda config: [config],
        lambda config: {**config, "reduction": 0},
        lambda config: {**config, "reduction": "4"},
        lambda config: {**config, "trainable": "all"},
        lambda config: {**config, "extra": [1]},
    ],
    ids=["not-an-object", "reduction-0", "reduction-string", "trainable-string", "extra-list"],
)
def test_malformed_adapter_config_is_an_adapter_error(tiny_models, tmp_path, change):
    folder = tiny_models["llava"]
    _save_trained_adapter(folder, tmp_path / "ad")
    config_path = tmp_path / "ad" / CONFIG_FILE
    config_path.write_text(json.dumps(change(json.loads(config_path.read_text()))))
    fresh = _load(folder)
    before = _snapshot(fresh.model)
    with pytest.raises(AdapterError):
        load_adapter(fresh.model, tmp_path / "ad", family=fresh.family, base_model=fresh.name)
    _assert_unchanged(fresh.model, before)


# ---- 4. quantization keeps the same modules in full precision in both modes --------


def test_both_quantization_modes_skip_the_same_modules_including_lm_head():
    eight = quantization_kwargs("8bit", torch.bfloat16)
    four = quantization_kwargs("4bit", torch.bfloat16)
    assert eight["llm_int8_skip_modules"] == four["llm_int8_skip_modules"] == QUANTIZATION_SKIP
    for module in ("lm_head", "vision_tower", "vision_model", "multi_modal_projector", "connector"):
        assert module in QUANTIZATION_SKIP
    assert eight["load_in_8bit"] and four["load_in_4bit"]


def test_adapter_is_refused_for_integer_target_parameters(tiny_models, tmp_path):
    folder = tiny_models["llava"]
    _save_trained_adapter(folder, tmp_path / "ad")
    fresh = _load(folder)
    linear = next(m for m in projector(fresh.model, fresh.family).modules() if hasattr(m, "weight"))
    int8 = torch.zeros(linear.weight.shape, dtype=torch.int8)
    linear.weight = torch.nn.Parameter(int8, requires_grad=False)  # as bitsandbytes' Int8Params
    with pytest.raises(AdapterError, match="quantiz"):
        load_adapter(fresh.model, tmp_path / "ad", family=fresh.family, base_model=fresh.name)
    assert torch.count_nonzero(linear.weight) == 0
    assert adapters_of(fresh.model) is None


# ---- 5. the ONNX cache survives a concurrent prune and a broken folder -------------


def _fake_export(monkeypatch):
    calls = []

    def export(loaded, path, dtype, size, opset=18):
        calls.append(path)
        Path(path).write_bytes(b"onnx")

    monkeypatch.setattr(encoder, "export_onnx", export)
    monkeypatch.setattr(encoder, "_opset", lambda device: 18)
    return calls


FAKE = SimpleNamespace(
    name="museum/model",
    revision="abc",
    family=SimpleNamespace(name="llava"),
    dtype=torch.float32,
    device=torch.device("cpu"),
)


def test_export_survives_an_entry_vanishing_during_prune(monkeypatch, tmp_path):
    _fake_export(monkeypatch)
    parent = encoder.cache_dir() / "onnx"
    parent.mkdir(parents=True)
    for i in range(encoder.KEEP_EXPORTS + 2):
        (parent / f"museum_model-llava-float32-old{i}").mkdir()
    (parent / ".tmp-gone").mkdir()
    vanished = {parent / "museum_model-llava-float32-old0", parent / ".tmp-gone"}
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self in vanished:  # removed by another process between glob and stat
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    path, exported = encoder.ensure_onnx(FAKE, torch.float32, (32, 32), "fp")
    assert exported and path.is_file()
    assert len(list(parent.glob("museum_model-llava-float32-*"))) <= encoder.KEEP_EXPORTS + 1


def test_cache_folder_without_its_onnx_file_is_repaired(monkeypatch, tmp_path):
    calls = _fake_export(monkeypatch)
    path, _ = encoder.ensure_onnx(FAKE, torch.float32, (32, 32), "fp")
    path.unlink()  # key.json stays: the folder is there, its graph is not
    path, exported = encoder.ensure_onnx(FAKE, torch.float32, (32, 32), "fp")
    assert exported and path.is_file() and len(calls) == 2
    assert encoder.ensure_onnx(FAKE, torch.float32, (32, 32), "fp") == (path, False)
    assert not list(path.parent.parent.glob(".tmp-*"))


# ---- 6. a tiny model is never written over a real checkpoint -----------------------


def test_tiny_model_refuses_a_folder_that_holds_something_else(tmp_path):
    checkpoint = tmp_path / "real"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llava"}')
    (checkpoint / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(ArtnoteError, match="--force"):
        build_tiny_model(checkpoint, "llava")
    assert (checkpoint / "model.safetensors").read_bytes() == b"precious"
    assert json.loads((checkpoint / "config.json").read_text()) == {"model_type": "llava"}


def test_tiny_model_rebuilds_over_a_tiny_model_and_forces_over_others(tmp_path):
    folder = build_tiny_model(tmp_path / "tiny", "llava")
    assert build_tiny_model(folder, "llava", seed=1) == folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    build_tiny_model(other, "llava", force=True)
    assert (other / "config.json").is_file()


def test_models_tiny_cli_refuses_then_forces(tmp_path):
    from typer.testing import CliRunner

    from artnote.cli import app

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    args = ["models", "tiny", str(tmp_path / "m"), "--family", "llava"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--force" in refused.output, refused.output
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output


def test_a_cached_checkpoint_needs_its_weights_at_the_revision_asked_for(tmp_path, monkeypatch):
    """A hub id counts as cached (so loading stays offline) only when its config and
    weights are in the cache at the wanted revision: a config alone, or another revision,
    must not force an offline load that then fails although the hub could be reached."""
    from huggingface_hub import constants

    from artnote.model.load import _in_local_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--museum--painter"
    commit = "a" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text("{}")
    assert not _in_local_cache("museum/painter")  # config only
    (snapshot / "model.safetensors.index.json").write_text("{}")
    assert _in_local_cache("museum/painter")
    assert _in_local_cache("museum/painter", commit)
    assert not _in_local_cache("museum/painter", "v2")  # a revision that was never fetched


def test_grouped_heads_are_read_natively_on_the_cpu_only(monkeypatch):
    """Under a mask, SDPA's grouped-head path is fast on the CPU but is the math kernel on
    CUDA: the switch is on for a CPU model, off for a CUDA one, and a user's value stays."""
    from artnote.model import load

    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    monkeypatch.setattr(load, "_gqa_set_here", False)
    load.native_gqa("cpu")
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
    load.native_gqa("cuda")
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "0"
    monkeypatch.setattr(load, "_gqa_set_here", False)
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")  # the user's own choice
    load.native_gqa("cuda")
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
