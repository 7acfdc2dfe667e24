"""Reading the source folders and writing the model folder for convert_artgpt4.

Weights are read key by key from safetensors (headers give names and shapes
without reading data), so only the tensors written next are in memory, and a
BLIP-2 folder's T5 language model is never read at all.
"""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artnote.errors import ModelError
from artnote.files import WriteError, write_error

EMBEDDINGS = "language_model.model.embed_tokens.weight"
_ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}


class ConversionError(ModelError):
    """A checkpoint or a source folder cannot be converted (one line, names the cause)."""


def read_configs(llm: Path, blip2: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig

    configs = []
    for flag, folder, model_type in (("--llm", llm, "llama"), ("--blip2", blip2, "blip-2")):
        if not folder.is_dir():
            raise ConversionError(f"{flag} {folder} is not a folder")
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConversionError(
                f"cannot read the config of {flag} {folder}: {_line(exc)}"
            ) from None
        if config.model_type != model_type:
            raise ConversionError(
                f"{flag} {folder} is a {config.model_type!r} model, not {model_type!r}"
            )
        configs.append(config)
    return configs[0], configs[1]


@dataclass(frozen=True)
class Source:
    """One tensor of the output: its shape and size, and how to read it when written."""

    shape: tuple[int, ...]
    nbytes: int
    read: Callable[[], Any]

    @classmethod
    def of_tensor(cls, tensor: Any) -> Source:
        return cls(tuple(tensor.shape), tensor.numel() * tensor.element_size(), tensor.clone)

    def load(self) -> Any:
        return self.read()


class SafetensorsFolder:
    """The tensors of a Hugging Face folder, by name, read only when asked for."""

    def __init__(self, folder: Path, flag: str) -> None:
        self.folder, self.flag = folder, flag
        self._handles: dict[str, Any] = {}
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            # The index names each tensor's shard: shards are opened when a tensor of
            # theirs is needed, so BLIP-2's T5-only shards may be left undownloaded.
            try:
                weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
                self._where = {str(k): str(v) for k, v in weight_map.items()}
                if any(Path(v).name != v for v in self._where.values()):
                    raise ValueError("a shard outside the folder")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConversionError(f"cannot read {index}: {_line(exc)}") from None
        elif (folder / "model.safetensors").is_file():
            self._where = dict.fromkeys(
                self._handle("model.safetensors").keys(), "model.safetensors"
            )
        else:
            raise ConversionError(
                f"{flag} {folder} holds no safetensors weights (model.safetensors or its "
                "index); pickled .bin files are never read: convert them to safetensors first"
            )

    def _handle(self, name: str) -> Any:
        if name not in self._handles:
            self._handles[name] = self._open(self.folder / name)
        return self._handles[name]

    def _open(self, path: Path) -> Any:
        import safetensors  # looked up at call time: tests watch what is read

        try:
            return safetensors.safe_open(str(path), framework="pt")
        except (OSError, safetensors.SafetensorError) as exc:
            raise ConversionError(f"cannot read {self.flag} weights {path}: {_line(exc)}") from None

    def keys(self) -> list[str]:
        return list(self._where)

    def rows(self, key: str, fractions: tuple[float, ...]) -> Any | None:
        """Rows spread over a matrix (at these fractions of its length), read alone."""
        import torch

        name = self._where.get(key)
        if name is None:
            return None
        piece = self._handle(name).get_slice(key)
        count = piece.get_shape()[0]
        picks = sorted({min(count - 1, int(f * count)) for f in fractions})
        return torch.cat([piece[i : i + 1] for i in picks])

    def source(self, key: str) -> Source | None:
        name = self._where.get(key)
        if name is None:
            return None
        import safetensors

        handle = self._handle(name)
        try:
            piece = handle.get_slice(key)  # header only
        except (safetensors.SafetensorError, KeyError) as exc:  # an index naming a wrong shard
            raise ConversionError(
                f"{self.flag} {self.folder}/{name}: {key}: {_line(exc)}"
            ) from None
        shape = tuple(piece.get_shape())
        nbytes = math.prod(shape) * _ITEMSIZE.get(piece.get_dtype(), 1)
        return Source(shape, nbytes, lambda: handle.get_tensor(key))


def make_processor(llm: Path, blip2: Path, num_query_tokens: int) -> tuple[Any, dict[str, Any]]:
    """Blip2Processor of the LLM's tokenizer and BLIP-2's image processor, and its image token.

    Blip2Processor adds an `<image>` token when the tokenizer has none; with a full
    vocabulary its id has no embedding row (the caller says so).
    """
    from transformers import AutoImageProcessor, AutoTokenizer, Blip2Processor

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(llm), local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ConversionError(f"cannot read the tokenizer of --llm {llm}: {_line(exc)}") from None
    try:
        images = AutoImageProcessor.from_pretrained(str(blip2), local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ConversionError(
            f"cannot read the image processor of --blip2 {blip2}: {_line(exc)}"
        ) from None
    processor = Blip2Processor(images, tokenizer, num_query_tokens=num_query_tokens)
    token = str(getattr(processor.image_token, "content", processor.image_token))
    return processor, {"token": token, "id": int(tokenizer.convert_tokens_to_ids(token))}


def write_weights(
    folder: Path,
    expected: dict[str, tuple[int, ...]],
    sources: dict[str, Source],
    *,
    max_shard_bytes: int,
    progress: Callable[[str], Any],
) -> Any:
    """Write the tensors in shards as save_pretrained names them; return the embeddings."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    shards: list[list[str]] = [[]]
    size = 0
    for key in expected:  # the model's own order, as save_pretrained writes it
        if shards[-1] and size + sources[key].nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += sources[key].nbytes
    count = len(shards)
    names = (
        ["model.safetensors"]
        if count == 1
        else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    )
    weight_map: dict[str, str] = {}
    embeddings = None
    for name, keys in zip(names, shards, strict=True):
        tensors = {key: sources[key].load().contiguous() for key in keys}
        embeddings = tensors.get(EMBEDDINGS, embeddings)
        try:  # written in Rust: a full disk comes back as SafetensorError, not OSError
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        except Exception as exc:
            raise _write_failed(folder / name, exc) from None
        weight_map.update(dict.fromkeys(keys, name))
        progress(f"  {name}: {len(keys)} tensors")
        del tensors  # one shard in memory at a time
    if count > 1:
        total = sum(sources[k].nbytes for k in expected)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True), encoding="utf-8"
        )
    return embeddings


def save_generation_config(llm: Path, config: Any, folder: Path) -> None:
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(str(llm), local_files_only=True)
    except (OSError, ValueError):
        generation = GenerationConfig.from_model_config(config.text_config)
    generation.save_pretrained(folder)


def _write_failed(path: Path, exc: BaseException) -> WriteError:
    """The one-line error of a failed write of `path` (a full disk: with the free space)."""
    if isinstance(exc, OSError):
        return write_error(path, exc)
    text = _line(exc)
    if "No space left" in text or "Disk quota" in text:
        return write_error(path, OSError(errno.ENOSPC, text))
    return WriteError(f"cannot write {path}: {text}")


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
