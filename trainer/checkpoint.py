"""Checkpoint folders: step-N/ and final/, each complete and loadable on its own.

    adapter.safetensors, adapter_config.json   the adapter (artnote.model.adapters)
    hyperparameters.toml                       what made it
    metrics.json                               validation metrics so far
    optimizer.safetensors, trainer_state.json  what --resume needs (no pickle): the step,
                                               losses, hyperparameters and split

A folder is written under a temporary name (artnote.files.atomic_folder: hidden, ending
.partial) and renamed when complete, so a crash or a full disk mid-write never leaves a
checkpoint that --resume would trust; a temporary folder is never read as one.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import tomllib
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from artnote.errors import AdapterError
from artnote.files import PARTIAL, WriteError, atomic_folder
from artnote.model.adapters import save_adapter
from artnote.model.load import LoadedModel

STEP_DIR = re.compile(r"^step-(\d+)$")


def write_toml(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def save_checkpoint(
    folder: Path,
    loaded: LoadedModel,
    optimizer: torch.optim.Optimizer,
    hyperparameters: Any,
    metrics: dict[str, Any],
    state: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    from safetensors.torch import save

    hp = asdict(hyperparameters) if is_dataclass(hyperparameters) else dict(hyperparameters)
    # One folder, published whole by one rename (artnote.files): --resume trusts a step-N/
    # because it exists. Files inside are plain writes; atomic_folder syncs them all.
    _remove_leftovers(folder)
    tmp = folder
    try:
        with atomic_folder(folder, replace=True) as tmp:
            save_adapter(
                loaded.model,
                tmp,
                family=loaded.family,
                base_model=loaded.name,
                base_revision=loaded.revision,
                extra=extra,
            )
            (tmp / "hyperparameters.toml").write_text(write_toml(hp), encoding="utf-8")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            # safetensors' bytes written by Python, so that a full disk is a clear error
            (tmp / "optimizer.safetensors").write_bytes(save(_optimizer_tensors(loaded, optimizer)))
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    except WriteError as exc:  # name the checkpoint as the user will look for it
        raise type(exc)(str(exc).replace(str(tmp), str(folder))) from None
    return folder


def _remove_leftovers(folder: Path) -> None:
    """What an earlier save of this same checkpoint left when it was killed (never read:
    only step-N/ and final/ are)."""
    for leftover in folder.parent.glob(f".{glob.escape(folder.name)}.*{PARTIAL}"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(folder.with_name(folder.name + PARTIAL), ignore_errors=True)  # older artnotes'


def _optimizer_tensors(
    loaded: LoadedModel, optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in loaded.model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensor = value if torch.is_tensor(value) else torch.tensor(float(value))
                out[f"{names[id(p)]}::{key}"] = tensor.detach().to("cpu").contiguous()
    return out


def load_optimizer_state(
    folder: Path, loaded: LoadedModel, optimizer: torch.optim.Optimizer
) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / "optimizer.safetensors"
    try:
        tensors = load_file(str(path))  # safetensors: no pickle, no code
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None
    params = dict(loaded.model.named_parameters())
    for key, tensor in tensors.items():
        name, _, slot = key.partition("::")
        if name not in params:
            raise AdapterError(f"checkpoint {folder} holds optimizer state for unknown {name}")
        p = params[name]
        target = tensor.to(p.device) if tensor.dim() else tensor
        optimizer.state[p][slot] = target


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))


def stored_hyperparameters(folder: Path) -> dict[str, Any]:
    """The hyperparameters a checkpoint was made with (older ones: from hyperparameters.toml)."""
    stored = read_state(folder).get("hyperparameters")
    if isinstance(stored, dict):
        return stored
    path = folder / "hyperparameters.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None


def resume_point(out_dir: Path) -> Path | None:
    """Where --resume continues: a complete final/ (finished, maybe never registered),
    else the latest complete step-N/."""
    final = out_dir / "final"
    if (final / "trainer_state.json").is_file():
        return final
    return latest_checkpoint(out_dir)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The step-N folder with the highest N that is complete."""
    best: tuple[int, Path] | None = None
    if not out_dir.is_dir():
        return None
    for child in out_dir.iterdir():
        m = STEP_DIR.match(child.name)
        if m and (child / "trainer_state.json").is_file():
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, child)
    return best[1] if best else None
