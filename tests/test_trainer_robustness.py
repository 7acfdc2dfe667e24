"""The trainer refuses what would corrupt a run or a registered adapter, and keeps its
held-out images held out across resumes and rounds."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.config import ModelSettings
from artnote.corrections import correct
from artnote.emotions import EMOTIONS
from artnote.model.adapters import attach_adapters, mark_trainable, read_adapter_config
from artnote.model.load import load_model
from artnote.records import Annotation, Provenance
from trainer import checkpoint
from trainer.data import CuratedImage, Sample, samples_from, split_by_image
from trainer.errors import TrainerError
from trainer.finetune import Hyperparameters, _optimizer, _Stop, finetune
from trainer.objectives import Objective

# ---- helpers -------------------------------------------------------------------------


def _settings(model_dir):
    from artnote.config import Settings

    s = Settings()
    s.model.name, s.model.device = str(model_dir), "cpu"
    return s


def _open(path):
    return Image.open(path).convert("RGB")


def _curated(art_paths, n: int) -> list[CuratedImage]:
    """n images (n <= 8), each with a description and an emotion: two samples per image."""
    return [
        CuratedImage(
            str(art_paths[i]),
            f"sha{i}",
            description=f"Painting number {i} with a sea.",
            emotions={EMOTIONS[i % len(EMOTIONS)]: 1.0},
        )
        for i in range(n)
    ]


# 6 images, 12 samples; 1 image held out, 10 training samples; batch 5: 2 steps per epoch.
HP = dict(epochs=2, lr=5e-3, batch_size=5, eval_generate=False)


def _stop_after(n: int):
    def crash(step):
        if step == n:
            raise _Stop

    return crash


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def _run(art_paths, model, out, curated, hp, **kw):
    return finetune(curated, _settings(model), hp, out, load_image=_open, progress=False, **kw)


def _catalog(db: Path, folder: Path, count: int, model: str = "tiny") -> None:
    """A catalog where `count` small images are annotated (by `model`, as provenance says)
    and have a corrected description."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        name = f"img{i}.png"
        Image.new("RGB", (48, 48), (40 * i % 256, 90, 200 - 30 * i)).save(folder / name)
        files[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    prov = Provenance(model, None, "idefics3", None, None, "1", "ph", {}, "torch", "cpu", 1.0)
    emotions = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
    with open_catalog(db) as cat:
        cid = cat.ensure_collection(folder)
        run = cat.start_run({}, model, None)
        states = [
            FileState(r, (folder / r).stat().st_size, (folder / r).stat().st_mtime_ns, sha)
            for r, sha in files.items()
        ]
        ids = cat.record_files(cid, run, states)
        cat.add_annotations(
            run,
            [(ids[r], Annotation("Alt.", "Desc.", emotions, "awe", "Awe.", prov)) for r in files],
        )
        cat.finish_run(run, "completed", {})
        for r, sha in files.items():
            correct(cat, sha[:12], {"description": f"A curated view of {r}."}, "ana")


@pytest.fixture
def cli(tiny_models, tmp_path, monkeypatch):
    """`artnote ...` in process against a catalog of two corrected images."""
    db = tmp_path / "catalog.db"
    _catalog(db, tmp_path / "collection", 2)
    monkeypatch.setenv("ARTNOTE_CATALOG", str(db))
    monkeypatch.setenv("ARTNOTE_MODEL", str(tiny_models["smolvlm"]))
    runner = CliRunner()

    def bare(*args, code: int = 0):
        """`artnote finetune --quiet ARGS`, no other flag."""
        result = runner.invoke(app, ["finetune", "--quiet", *map(str, args)])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    def run(*args, code: int = 0):
        return bare("--epochs", "1", *args, code=code)

    run.db, run.bare = db, bare
    return run


def _registered(db: Path) -> list[str]:
    with open_catalog(db) as cat:
        return [a["name"] for a in cat.adapters()]


# ---- 1. a registered adapter is never overwritten --------------------------------------


def test_finetune_refuses_an_out_that_holds_a_registered_adapter(cli, tmp_path):
    cli("--name", "a", "--out", tmp_path / "runs" / "a")
    final = tmp_path / "runs" / "a" / "final"
    before = (final / "adapter.safetensors").read_bytes()
    result = cli("--name", "z", "--out", tmp_path / "runs" / "a", "--seed", "1", code=2)
    assert "--out" in result.output and "'a'" in result.output
    result = cli("--name", "z", "--out", final, code=2)  # the adapter's own folder
    assert (final / "adapter.safetensors").read_bytes() == before
    assert _registered(cli.db) == ["a"]


def test_finetune_refuses_an_out_with_an_unregistered_final_adapter(cli, tmp_path):
    out = tmp_path / "runs" / "b"
    (out / "final").mkdir(parents=True)
    (out / "final" / "adapter_config.json").write_text("{}")
    result = cli("--name", "b", "--out", out, code=2)
    assert "final" in result.output and "--resume" in result.output
    assert _registered(cli.db) == []


def test_library_refuses_to_replace_a_finished_adapter(tiny_models, art_paths, tmp_path):
    hp = Hyperparameters(epochs=1, batch_size=4, eval_generate=False)
    _run(art_paths, tiny_models["smolvlm"], tmp_path / "r", _curated(art_paths, 2), hp)
    before = (tmp_path / "r" / "final" / "adapter.safetensors").read_bytes()
    with pytest.raises(TrainerError, match="final"):
        _run(art_paths, tiny_models["smolvlm"], tmp_path / "r", _curated(art_paths, 2), hp)
    assert (tmp_path / "r" / "final" / "adapter.safetensors").read_bytes() == before


# ---- 2. impossible numbers are bad usage ----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-size", "0"],
        ["--grad-accum", "0"],
        ["--checkpoint-every", "0"],
        ["--epochs", "0"],
        ["--lr", "0"],
        ["--lr", "-0.001"],
        ["--lr", "nan"],
    ],
    ids=lambda a: "".join(a),
)
def test_impossible_hyperparameters_are_bad_usage(cli, tmp_path, args):
    result = cli("--name", "x", "--out", tmp_path / "x", *args, code=2)
    assert args[0] in result.output
    assert _registered(cli.db) == [] and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"grad_accum": 0},
        {"checkpoint_every": 0},
        {"lr": 0.0},
        {"lr": float("inf")},
        {"val_fraction": 1.0},
        {"warmup_fraction": -0.1},
    ],
    ids=lambda b: next(iter(b)),
)
def test_library_refuses_impossible_hyperparameters_before_saving(
    tiny_models, art_paths, tmp_path, bad
):
    hp = Hyperparameters(**{**HP, **bad})
    with pytest.raises(TrainerError, match=next(iter(bad)).replace("_", "[-_]")):
        _run(art_paths, tiny_models["smolvlm"], tmp_path / "r", _curated(art_paths, 6), hp)
    assert not (tmp_path / "r").exists()


# ---- 3. --resume continues the run it names, on the split it started with --------------


def test_resume_needs_name_or_out(cli):
    result = cli("--resume", code=2)
    assert "--resume" in result.output and "--name" in result.output
    assert _registered(cli.db) == []


def test_resume_without_a_checkpoint_says_so(cli, tmp_path, tiny_models, art_paths):
    result = cli("--name", "n", "--resume", code=1)
    assert "no checkpoint" in result.output
    with pytest.raises(TrainerError, match="no checkpoint"):
        _run(
            art_paths,
            tiny_models["smolvlm"],
            tmp_path / "empty",
            _curated(art_paths, 2),
            Hyperparameters(**HP),
            resume=True,
        )


# 2 images, 2 samples, batch 1: 2 steps per epoch, 4 in all; none of these is a default.
RUN = ["--epochs", "2", "--lr", "5e-3", "--batch-size", "1", "--checkpoint-every", "1"]


def _cli_killed_after(cli, monkeypatch, step: int, *args) -> None:
    """`artnote finetune ARGS` that crashes right after step `step` (and its checkpoint)."""
    import trainer.finetune as module

    real = module.finetune
    with monkeypatch.context() as m:
        m.setattr(module, "finetune", lambda *a, **kw: real(*a, **kw, on_step=_stop_after(step)))
        result = cli.bare(*args, code=1)
    assert isinstance(result.exception, _Stop), result.output


def test_resume_takes_the_runs_hyperparameters_for_the_flags_not_given(cli, monkeypatch):
    cli.bare("--name", "whole", *RUN)
    _cli_killed_after(cli, monkeypatch, 3, "--name", "cut", *RUN)
    assert checkpoint.latest_checkpoint(Path("adapters/cut")).name == "step-3"
    assert _registered(cli.db) == ["whole"]
    cli.bare("--name", "cut", "--resume")  # no flag repeated: the run's own values
    assert _registered(cli.db) == ["whole", "cut"]
    whole, cut = (checkpoint.read_state(Path("adapters", n, "final")) for n in ("whole", "cut"))
    assert cut["hyperparameters"] == whole["hyperparameters"]
    assert cut["step"] == whole["step"] == 4
    assert cut["losses"] == pytest.approx(whole["losses"])
    _assert_same_weights(Path("adapters/whole/final"), Path("adapters/cut/final"))


def test_resume_refuses_a_flag_given_with_another_value(cli, monkeypatch):
    _cli_killed_after(cli, monkeypatch, 1, "--name", "cut", *RUN)
    result = cli.bare("--name", "cut", "--resume", "--epochs", "3", code=1)
    assert "--epochs 2 (now 3)" in result.output
    result = cli.bare("--name", "cut", "--resume", "--seed", "1", code=1)
    assert "--seed 0 (now 1)" in result.output
    assert sorted(p.name for p in Path("adapters/cut").iterdir()) == ["step-1"]
    # The same value, or another checkpoint frequency (it changes no weight), is fine.
    cli.bare("--name", "cut", "--resume", "--epochs", "2", "--checkpoint-every", "3")
    assert checkpoint.read_state(Path("adapters/cut/final"))["step"] == 4
    assert _registered(cli.db) == ["cut"]


def test_without_resume_the_flags_not_given_are_the_defaults_their_help_shows(cli):
    import typer.main

    defaults = asdict(Hyperparameters())
    command = typer.main.get_command(app).commands["finetune"]
    shown = {p.name: p.show_default for p in command.params}
    for name in ("epochs", "lr", "batch_size", "grad_accum", "seed", "checkpoint_every"):
        assert isinstance(shown[name], str), name  # the options' own default is None
        assert type(defaults[name])(shown[name]) == defaults[name], (name, shown[name])
    cli.bare("--name", "plain")
    assert checkpoint.read_state(Path("adapters/plain/final"))["hyperparameters"] == defaults


def test_resume_reuses_the_stored_split_and_leaves_new_images_out(tiny_models, art_paths, tmp_path):
    model, hp = tiny_models["smolvlm"], Hyperparameters(**HP, checkpoint_every=1, seed=5)
    six, eight = _curated(art_paths, 6), _curated(art_paths, 8)
    whole = _run(art_paths, model, tmp_path / "whole", six, hp)
    with pytest.raises(_Stop):
        _run(art_paths, model, tmp_path / "cut", six, hp, on_step=_stop_after(3))
    state = checkpoint.read_state(tmp_path / "cut" / "step-3")
    assert state["hyperparameters"]["lr"] == hp.lr
    held = state["split"]["validation"]
    assert len(held) == 1
    # Two images were curated between the kill and the resume; split with the rest, they
    # would move the held-out image into training (so the assertions below are real).
    _, fresh_val = split_by_image(samples_from(eight), hp.val_fraction, hp.seed)
    assert {s.sha256 for s in fresh_val}.isdisjoint(held)
    resumed = _run(art_paths, model, tmp_path / "cut", eight, hp, resume=True)
    assert resumed.left_out == 2 and resumed.samples == whole.samples == 12
    final = checkpoint.read_state(resumed.final_dir)
    assert final["split"]["validation"] == held
    assert set(final["split"]["training"]) == {f"sha{i}" for i in range(6)} - set(held)
    _assert_same_weights(whole.final_dir, resumed.final_dir)
    assert resumed.metrics == pytest.approx(whole.metrics)


def test_resume_refuses_other_hyperparameters(tiny_models, art_paths, tmp_path):
    model, hp = tiny_models["smolvlm"], Hyperparameters(**HP, checkpoint_every=1)
    with pytest.raises(_Stop):
        _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), hp, on_step=_stop_after(1))
    other = Hyperparameters(**{**HP, "lr": 1e-2}, checkpoint_every=1)
    with pytest.raises(TrainerError, match=r"--lr"):
        _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), other, resume=True)
    # Checkpoint frequency changes no weight: resuming with another one is fine.
    again = Hyperparameters(**HP, checkpoint_every=3)
    _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), again, resume=True)


def test_resume_refuses_when_its_training_images_gained_fields(tiny_models, art_paths, tmp_path):
    model, hp = tiny_models["smolvlm"], Hyperparameters(**HP, checkpoint_every=1)
    with pytest.raises(_Stop):
        _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), hp, on_step=_stop_after(1))
    held = checkpoint.read_state(tmp_path / "cut" / "step-1")["split"]["validation"]
    changed = _curated(art_paths, 6)
    trained = next(c for c in changed if c.sha256 not in held)
    trained.alt_text = "A new alt text, corrected after the kill."
    with pytest.raises(TrainerError, match="11 samples, not the 10"):
        _run(art_paths, model, tmp_path / "cut", changed, hp, resume=True)


def test_a_checkpoint_on_an_epoch_boundary_comes_after_that_epochs_validation(
    tiny_models, art_paths, tmp_path
):
    model, hp = tiny_models["smolvlm"], Hyperparameters(**{**HP, "epochs": 3}, checkpoint_every=2)
    whole = _run(art_paths, model, tmp_path / "whole", _curated(art_paths, 6), hp)
    with pytest.raises(_Stop):
        _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), hp, on_step=_stop_after(3))
    metrics = json.loads((tmp_path / "cut" / "step-2" / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and "val_loss" in metrics  # step 2 ends epoch 1
    resumed = _run(art_paths, model, tmp_path / "cut", _curated(art_paths, 6), hp, resume=True)
    # The resumed run's step-4 checkpoint holds epoch 2's validation, as the whole run's does.
    whole4, cut4 = (
        json.loads((tmp_path / run / "step-4" / "metrics.json").read_text())
        for run in ("whole", "cut")
    )
    assert whole4["epoch"] == 2 and len(whole4["history"]) == len(cut4["history"]) == 2
    for w, c in zip(whole4.pop("history"), cut4.pop("history"), strict=True):
        assert c == pytest.approx(w)
    assert cut4 == pytest.approx(whole4)
    assert resumed.metrics == pytest.approx(whole.metrics)


# ---- 4. the next round keeps the parent's held-out images held out --------------------


def test_from_adapter_keeps_the_parents_split(tiny_models, art_paths, tmp_path):
    model, hp = tiny_models["smolvlm"], Hyperparameters(**HP)
    parent = _run(art_paths, model, tmp_path / "parent", _curated(art_paths, 6), hp)
    split = read_adapter_config(parent.final_dir).extra["split"]
    assert len(split["validation"]) == 1 and len(split["training"]) == 5
    # A seed whose fresh split of the eight images would hold out a parent training image.
    samples = samples_from(_curated(art_paths, 8))
    seed = next(
        s
        for s in range(100)
        if {x.sha256 for x in split_by_image(samples, hp.val_fraction, s)[1]}
        & set(split["training"])
    )
    child_hp = Hyperparameters(**{**HP, "seed": seed})
    child = _run(
        art_paths,
        model,
        tmp_path / "child",
        _curated(art_paths, 8),
        child_hp,
        from_adapter=parent.final_dir,
    )
    child_split = read_adapter_config(child.final_dir).extra["split"]
    assert set(child_split["validation"]) == set(split["validation"])
    assert set(child_split["training"]) == set(split["training"]) | {"sha6", "sha7"}
    assert child.samples == 16


# ---- 5. finetune --config --------------------------------------------------------------


def test_finetune_reads_the_config_file(tiny_models, tmp_path, monkeypatch):
    db = tmp_path / "elsewhere.db"
    _catalog(db, tmp_path / "collection", 2, model=str(tiny_models["smolvlm"]))
    conf = tmp_path / "conf" / "museum.toml"
    conf.parent.mkdir()
    conf.write_text(
        f'[catalog]\nurl = "{db}"\n\n[model]\nname = "{tiny_models["smolvlm"]}"\ndevice = "cpu"\n'
    )
    result = CliRunner().invoke(
        app,
        ["finetune", "--config", str(conf), "--name", "cfg", "--epochs", "1", "--quiet"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert _registered(db) == ["cfg"]
    assert not (tmp_path / "artnote.db").exists()  # not the default catalog


# ---- 6. the optimizer and the loss ------------------------------------------------------


@pytest.fixture(scope="module")
def trainable_model(tiny_models):
    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    attach_adapters(loaded.model)
    mark_trainable(loaded.model, loaded.family)
    return loaded


def test_norm_gains_and_biases_are_not_weight_decayed(trainable_model):
    loaded = trainable_model
    trainable = {n: p for n, p in loaded.model.named_parameters() if p.requires_grad}
    optimizer = _optimizer(list(trainable.values()), Hyperparameters(), loaded)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert set(decay) == {id(p) for p in trainable.values()}  # every tensor, once
    norms = [n for n, p in trainable.items() if "norm" in n]
    assert norms and all(decay[id(trainable[n])] == 0 for n in norms)
    for n, p in trainable.items():
        assert decay[id(p)] == (0.05 if p.ndim >= 2 else 0.0), n


def test_each_sample_weighs_the_same_in_the_loss(trainable_model, art_images):
    objective = Objective(trainable_model)
    batch = [
        Sample("p0", "s0", "alt_text", text="Waves."),
        Sample(
            "p1",
            "s1",
            "description",
            text="A long description of a stormy sea with many boats, rowers bending low, "
            "and a snowy mountain far behind under a pale sky.",
        ),
        Sample("p2", "s2", "emotion", emotions=tuple(1.0 if e == "awe" else 0.0 for e in EMOTIONS)),
    ]
    images = art_images[:3]
    with torch.no_grad():
        alone = [float(objective.loss([s], [im])[0]) for s, im in zip(batch, images, strict=True)]
        together = float(objective.loss(batch, images)[0])
        text_pair = float(objective.text_loss(batch[:2], images[:2]))
    assert together == pytest.approx(sum(alone) / 3, rel=1e-5)
    assert text_pair == pytest.approx((alone[0] + alone[1]) / 2, rel=1e-5)
    # The two answers differ in length and loss, so a per-token mean would differ.
    lengths = [len(objective.answer_ids(s)[1]) for s in batch[:2]]
    per_token = (alone[0] * lengths[0] + alone[1] * lengths[1]) / sum(lengths)
    assert abs(per_token - text_pair) > 1e-2
