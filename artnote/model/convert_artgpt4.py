"""Convert the authors' ArtGPT-4 checkpoint (`ArtGPT-4.pth`) into artnote's formats.

The release holds only what the authors trained (their saver drops frozen
parameters, minigpt4/runners/runner_base.py `_save_checkpoint`): `llama_proj`, one
bottleneck adapter per Llama layer (`self_attn.1`, since ArtGPT-4 wraps each
attention as `nn.ModuleList([attn, adapter])`), every post-attention norm and the
even layers' input norm. The frozen rest comes from two folders the user has:
BLIP-2 FlanT5-XXL (vision model, Q-Former, query tokens; its T5 is never read) and
the Vicuna the checkpoint was trained on. Out come OUT/model, a folder that
`Blip2ForConditionalGeneration.from_pretrained` loads (language_projection =
llama_proj, the LLM's own norms), and OUT/adapter, artnote's adapter format holding
the trained set (adapters, norms, projection), so that
`artnote scan --model OUT/model --adapter OUT/adapter` runs ArtGPT-4.

Nothing is unpickled beyond tensors and plain containers (torch.load weights_only),
weights are streamed key by key from safetensors, and everything is written into a
temporary folder beside OUT (artnote.files.atomic_folder) that is renamed only when
all of it is written and synced.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from artnote.files import WriteError, atomic_folder
from artnote.model import convert_artgpt4_io as cio
from artnote.model.adapters import (
    ADAPTER_FILE,
    CONFIG_FILE,
    AdapterConfig,
    adapters_of,
    attach_adapters,
    base_fingerprint,
    file_hash,
    trainable_names,
)
from artnote.model.convert_artgpt4_io import ConversionError
from artnote.model.families import (
    Family,
    decoder_layers,
    family_of_config,
    language_model,
    projector,
)

# Buffers that modules compute from their config when built (rotary frequencies and
# their caches, position-id ranges, relative-position indices). They are never
# trained; the authors' saver keeps them only because it drops parameters, not
# buffers. So a key whose last part is one of these is skipped and listed.
RECOMPUTED_BUFFERS = frozenset(
    {"inv_freq", "cos_cached", "sin_cached", "position_ids", "relative_position_index"}
)

# Vicuna-13B v0, which the paper used: v0 added a [PAD] row (32,001 tokens);
# v1.1 has the same 5120/40 shape with LLaMA's 32,000.
V0_SHAPE = {"hidden": 5120, "layers": 40, "vocab": 32001}

_ADAPTER_KEY = re.compile(
    r"llama_model\.model\.layers\.(\d+)\.self_attn\.1\.(down|up)\.(weight|bias)"
)
_NORM_KEY = re.compile(
    r"llama_model\.model\.layers\.(\d+)\.(post_attention_layernorm|input_layernorm)\.weight"
)
_PROJ_KEYS = ("llama_proj.weight", "llama_proj.bias")


@dataclass
class ConversionReport:
    kind: str  # "artgpt4" (adapters + norms + projection) or "minigpt4" (projection only)
    model_dir: Path
    adapter_dir: Path | None
    converted: list[str]  # checkpoint keys written (projection, adapters, norms)
    skipped_buffers: list[str]  # recomputed buffers, from the checkpoint and the LLM
    unknown_keys: list[str]  # other checkpoint keys: neither converted nor needed
    llm_identity: dict[str, Any]
    image_token: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_dir"] = str(self.model_dir)
        data["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        return data


def convert_artgpt4(
    checkpoint: Path,
    llm: Path,
    blip2: Path,
    out: Path,
    *,
    progress: Callable[[str], Any] = print,
    max_shard_bytes: int = 5 * 1024**3,
) -> ConversionReport:
    """Convert `checkpoint` with the frozen parts from `llm` and `blip2` into OUT.

    OUT must be missing or empty; on any error nothing is left behind.
    """
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from artnote.model.load import quiet_transformers

    quiet_transformers()
    checkpoint, llm, blip2, out = (Path(p).expanduser() for p in (checkpoint, llm, blip2, out))
    _check_out(out)
    llm_config, blip2_config = cio.read_configs(llm, blip2)
    state, trained_with = read_checkpoint(checkpoint)
    plan = _plan_checkpoint(state, llm_config.num_hidden_layers)
    llm_weights = cio.SafetensorsFolder(llm, "--llm")
    blip2_weights = cio.SafetensorsFolder(blip2, "--blip2")
    identity, warnings = _identify(llm_config, llm_weights)
    identity["checkpoint_llama_model"] = trained_with
    progress(
        f"LLM: hidden {identity['hidden']}, {identity['layers']} layers, vocabulary "
        f"{identity['vocab']}, embedding fingerprint {identity['embedding_sha256']}"
        + (f"; the checkpoint was trained on llama_model {trained_with}" if trained_with else "")
    )
    processor, image_token = cio.make_processor(llm, blip2, blip2_config.num_query_tokens)
    if image_token["id"] >= llm_config.vocab_size:
        # The LLM's rows stay the authors' (no row is added): artnote's MiniGPT-4 prompt
        # marks the image positions by mask, so the placeholder needs no embedding.
        warnings.append(
            f"the tokenizer's {image_token['token']!r} (id {image_token['id']}) is outside the "
            f"LLM's {llm_config.vocab_size} embedding rows: image_token_index is left unset"
        )
        image_token["id"] = None
    config = Blip2Config(
        vision_config=blip2_config.vision_config.to_dict(),
        qformer_config=blip2_config.qformer_config.to_dict(),
        text_config=llm_config.to_dict(),
        num_query_tokens=blip2_config.num_query_tokens,
        image_token_index=image_token["id"],
    )
    config.architectures = [Blip2ForConditionalGeneration.__name__]
    config.dtype = llm_config.dtype
    with torch.device("meta"):  # names and shapes only: no memory, no weights
        skeleton = Blip2ForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if config.text_config.tie_word_embeddings:
        expected.pop("language_model.lm_head.weight", None)
    family = family_of_config(config)
    targets = _adapter_targets(skeleton, family, plan["kind"])
    _check_shapes(state, plan, targets)
    sources, skipped_llm, unknown_llm = _sources(expected, llm_weights, blip2_weights, state)
    if plan["unknown"]:  # trained weights of a variant this converter does not know
        warnings.append(
            f"{len(plan['unknown'])} checkpoint key(s) are not converted, so the output "
            f"lacks them: {_few(plan['unknown'])}"
        )
    for msg in warnings:
        progress(f"warning: {msg}")

    tmp = out
    try:
        with atomic_folder(out) as tmp:  # renamed to OUT once all of it is on disk
            model_dir = tmp / "model"
            progress(f"writing the model folder ({len(expected)} tensors)")
            embeddings = cio.write_weights(
                model_dir, expected, sources, max_shard_bytes=max_shard_bytes, progress=progress
            )
            config.save_pretrained(model_dir)
            cio.save_generation_config(llm, config, model_dir)
            processor.save_pretrained(model_dir)
            (model_dir / "README.md").write_text(_readme(checkpoint, llm, blip2), encoding="utf-8")
            if plan["kind"] == "artgpt4":
                progress(f"writing the adapter ({len(targets)} tensors)")
                # The real function on the skeleton given the written embeddings: the same
                # fingerprint load_adapter computes on the loaded model.
                language_model(skeleton).get_input_embeddings().weight = torch.nn.Parameter(
                    embeddings, requires_grad=False
                )
                fingerprint = base_fingerprint(skeleton)
                _write_adapter(
                    tmp / "adapter", state, targets, skeleton, family, fingerprint, out, checkpoint
                )
            if out.is_dir():
                out.rmdir()  # empty, checked at the start; a folder made meanwhile: refused
    except WriteError as exc:  # a full disk: names OUT (not its temporary) and the space left
        raise ConversionError(str(exc).replace(str(tmp), str(out))) from None
    except OSError as exc:  # a folder made at OUT meanwhile, ...
        raise ConversionError(f"cannot write {out}: {_first_line(exc)}") from None
    report = ConversionReport(
        kind=plan["kind"],
        model_dir=out / "model",
        adapter_dir=out / "adapter" if plan["kind"] == "artgpt4" else None,
        converted=sorted(targets),
        skipped_buffers=sorted(plan["buffers"] + skipped_llm),
        unknown_keys=sorted(plan["unknown"] + unknown_llm),
        llm_identity=identity,
        image_token=image_token,
        warnings=warnings,
    )
    adapter = report.adapter_dir
    progress(f"wrote {report.model_dir}" + (f" and {adapter}" if adapter else ""))
    return report


def read_checkpoint(path: Path) -> tuple[dict[str, Any], str | None]:
    """The checkpoint's `model` entry and the LLM its config names (the authors' path).

    Tensors and plain containers only: torch.load's weights_only unpickler refuses
    any other object before it is built, so no code from the file runs.
    """
    import torch

    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    try:
        try:  # mmap: the 6 GB release is mostly optimizer state, which is never read
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ConversionError(
            f"checkpoint {path} holds objects other than tensors and plain containers{what}: "
            "refused, because unpickling them could run code"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ConversionError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise ConversionError(
            f"checkpoint {path} has no 'model' entry (not a MiniGPT-4/ArtGPT-4 checkpoint)"
        )
    bad = [str(k) for k, v in model.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise ConversionError(f"checkpoint {path}: 'model' holds non-tensor entries: {_few(bad)}")
    config = obj.get("config")
    section = config.get("model") if isinstance(config, dict) else None
    trained_with = section.get("llama_model") if isinstance(section, dict) else None
    return model, trained_with if isinstance(trained_with, str) else None


def _plan_checkpoint(state: dict[str, Any], layers: int) -> dict[str, Any]:
    """Sort the checkpoint's keys: expected, recomputed buffers, unknown; check completeness."""
    buffers = [k for k in state if k.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS]
    llama_trained = [k for k in state if _ADAPTER_KEY.fullmatch(k) or _NORM_KEY.fullmatch(k)]
    # MiniGPT-4's own checkpoints train the projection only; any adapter or norm key
    # makes it ArtGPT-4's, and then every one of them must be there.
    kind = "artgpt4" if llama_trained else "minigpt4"
    expected = list(_PROJ_KEYS)
    if kind == "artgpt4":
        indices = {
            int(m.group(1)) for k in llama_trained if (m := re.search(r"layers\.(\d+)\.", k))
        }
        if max(indices) >= layers:
            raise ConversionError(
                f"the checkpoint has adapters for {max(indices) + 1} layers but the LLM has "
                f"{layers}: --llm is not the model the checkpoint was trained on"
            )
        for i in range(layers):
            prefix = f"llama_model.model.layers.{i}."
            expected += [
                prefix + f"self_attn.1.{p}.{leaf}"
                for p in ("down", "up")
                for leaf in ("weight", "bias")
            ]
            expected.append(prefix + "post_attention_layernorm.weight")
            if i % 2 == 0:
                expected.append(prefix + "input_layernorm.weight")
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} expected key(s): {_few(missing)}")
    known = set(expected) | set(buffers)
    unknown = [k for k in state if k not in known]
    return {"kind": kind, "expected": expected, "buffers": buffers, "unknown": unknown}


def _adapter_targets(skeleton: Any, family: Family, kind: str) -> dict[str, tuple[str, tuple]]:
    """Checkpoint key -> (artnote tensor name, shape), found in a meta-device model.

    Names come from the very modules adapters.py picks (attach_adapters,
    trainable_names), so the adapter file fits load_adapter by construction.
    """
    proj = projector(skeleton, family)
    if kind == "minigpt4":
        names = {id(p): n for n, p in skeleton.named_parameters()}
        return {
            "llama_proj.weight": (names[id(proj.weight)], tuple(proj.weight.shape)),
            "llama_proj.bias": (names[id(proj.bias)], tuple(proj.bias.shape)),
        }
    attach_adapters(skeleton, reduction=4)  # ArtGPT-4's ImageAdapter: hidden // 4
    names = {id(p): n for n, p in skeleton.named_parameters()}
    params: dict[str, Any] = {"llama_proj.weight": proj.weight, "llama_proj.bias": proj.bias}
    for i, (layer, adapter) in enumerate(
        zip(decoder_layers(skeleton), adapters_of(skeleton), strict=True)
    ):
        prefix = f"llama_model.model.layers.{i}."
        for part in ("down", "up"):
            for leaf in ("weight", "bias"):
                params[prefix + f"self_attn.1.{part}.{leaf}"] = getattr(
                    getattr(adapter, part), leaf
                )
        params[prefix + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        if i % 2 == 0:
            params[prefix + "input_layernorm.weight"] = layer.input_layernorm.weight
    targets = {k: (names[id(p)], tuple(p.shape)) for k, p in params.items()}
    wanted = set(trainable_names(skeleton, family))
    if wanted != {name for name, _ in targets.values()}:
        extra = sorted(wanted - {name for name, _ in targets.values()})
        raise ConversionError(
            f"artnote's trainable set has tensors the checkpoint cannot fill: {_few(extra)}"
        )
    return targets


def _check_shapes(state: dict[str, Any], plan: dict[str, Any], targets: dict) -> None:
    for key in plan["expected"]:
        tensor, (_, shape) = state[key], targets[key]
        if tuple(tensor.shape) != shape:
            raise ConversionError(
                f"checkpoint tensor {key} has shape {tuple(tensor.shape)} but the LLM needs "
                f"{shape}: --llm is not the model the checkpoint was trained on"
            )
        if not tensor.dtype.is_floating_point:
            raise ConversionError(f"checkpoint tensor {key} is {tensor.dtype}, not floating point")


def _sources(expected: dict, llm: cio.SafetensorsFolder, blip2: cio.SafetensorsFolder, state: dict):
    """Where each tensor of the model folder comes from; checks names and shapes first."""
    sources: dict[str, cio.Source] = {}
    missing: list[str] = []
    for key, shape in expected.items():
        if key.startswith("language_model."):
            source = llm.source(key.removeprefix("language_model."))
        elif key.startswith("language_projection."):
            source = cio.Source.of_tensor(state["llama_proj." + key.rsplit(".", 1)[-1]])
        else:  # vision_model., qformer., query_tokens: BLIP-2's own names
            source = blip2.source(key)
        if source is None:
            missing.append(key)
            continue
        if tuple(source.shape) != shape:
            origin = "--llm" if key.startswith("language_model.") else "--blip2"
            raise ConversionError(
                f"{origin} tensor {key} has shape {tuple(source.shape)}, the model needs {shape}"
            )
        sources[key] = source
    if missing:
        raise ConversionError(f"the source folders lack {len(missing)} tensor(s): {_few(missing)}")
    wanted = {k.removeprefix("language_model.") for k in expected}
    extra = [k for k in llm.keys() if k not in wanted]
    skipped = [f"--llm {k}" for k in extra if k.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS]
    unknown = [f"--llm {k}" for k in extra if k.rsplit(".", 1)[-1] not in RECOMPUTED_BUFFERS]
    return sources, skipped, unknown


def _identify(config: Any, weights: cio.SafetensorsFolder) -> tuple[dict[str, Any], list[str]]:
    """The LLM's shape and a fingerprint of some embedding rows; warn if not v0-shaped."""
    # Rows across the vocabulary, the last included: fine-tuning leaves unseen tokens'
    # rows as they were, so a few first rows alone could not tell LLaMA from Vicuna;
    # v0's last row is its added [PAD].
    rows = weights.rows("model.embed_tokens.weight", (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0))
    if rows is None:
        raise ConversionError(f"--llm {weights.folder} has no model.embed_tokens.weight")
    rows = rows.float().contiguous()
    identity = {
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "vocab": config.vocab_size,
        "heads": config.num_attention_heads,
        "intermediate": config.intermediate_size,
        "embedding_sha256": hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16],
    }
    warnings = []
    shape = {k: identity[k] for k in V0_SHAPE}
    if shape != V0_SHAPE:
        hint = " (Vicuna v1.1 and LLaMA have 32,000)" if shape["vocab"] == 32000 else ""
        warnings.append(
            f"the LLM is not shaped like Vicuna-13B v0, which ArtGPT-4 was trained on: "
            f"hidden {shape['hidden']}, {shape['layers']} layers, vocabulary {shape['vocab']} "
            f"vs {V0_SHAPE['hidden']}, {V0_SHAPE['layers']}, {V0_SHAPE['vocab']}{hint}"
        )
    return identity, warnings


def _write_adapter(folder, state, targets, skeleton, family, fingerprint, out, checkpoint) -> None:
    from safetensors.torch import save

    folder.mkdir()
    # clone: a checkpoint's tensors may share storage, which safetensors refuses
    tensors = {name: state[key].detach().clone().contiguous() for key, (name, _) in targets.items()}
    # safetensors' bytes written by Python, so that a full disk is a clear error
    (folder / ADAPTER_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))
    hidden = skeleton.config.text_config.hidden_size
    config = AdapterConfig(
        base_model=str((out / "model").resolve()),
        base_revision=None,
        base_fingerprint=fingerprint,
        family=family.name,
        reduction=4,
        layers=skeleton.config.text_config.num_hidden_layers,
        hidden_size=hidden,
        trainable=trainable_names(skeleton, family),
        content_hash=file_hash(folder / ADAPTER_FILE),
        extra={"converted_from": checkpoint.name, "converter": "artnote models convert-artgpt4"},
    )
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} exists and is not an empty folder: choose a new one")
    if not out.parent.is_dir():
        raise ConversionError(f"the folder {out.parent} (parent of --out) does not exist")


def _readme(checkpoint: Path, llm: Path, blip2: Path) -> str:
    return (
        "# ArtGPT-4, converted by artnote\n\n"
        f"- projection (llama_proj) from {checkpoint.name}\n- language model from {llm}\n"
        f"- vision model, Q-Former and query tokens from {blip2}\n\n"
        "The language model's norms here are the LLM's own; ArtGPT-4's trained norms and\n"
        "adapters are in ../adapter: `artnote scan --model model --adapter adapter`.\n"
    )


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
