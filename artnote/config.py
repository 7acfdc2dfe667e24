"""Typed settings: defaults < artnote.toml < ARTNOTE_* environment < command-line flags.

artnote.toml is read from $ARTNOTE_CONFIG, else ./artnote.toml when present.
Every key may also be set as ARTNOTE_<SECTION>_<KEY> (e.g. ARTNOTE_MODEL_DEVICE=cpu);
two shortcuts exist because users reach for them: ARTNOTE_CATALOG and ARTNOTE_MODEL.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artnote.errors import ConfigError

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "gif")


@dataclass
class ModelSettings:
    name: str = DEFAULT_MODEL  # hub id or local folder
    revision: str | None = None  # hub revision (branch, tag or commit)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes, CUDA only)
    encoder: str = "onnx"  # onnx (ONNX Runtime, exported once per model, cached) | torch
    encoder_precision: str = "auto"  # auto (int8 on CPU, full on CUDA) | full | int8 (CPU)
    trust_remote_code: bool = False  # run code shipped with a checkpoint: off unless you trust it
    adapter: str | None = None  # adapter name, folder, or "latest"; none by default
    # SmolVLM: longest image side before splitting into tiles (a multiple of the tile, 512 px);
    # 0 = the model's default (2048: up to 16 tiles + a global view). Smaller is faster.
    max_image_side: int = 0


@dataclass
class GenerationSettings:
    alt_text_tokens: int = 48  # max new tokens per field
    description_tokens: int = 256
    explanation_tokens: int = 80
    min_new_tokens: int = 0  # benchmarks set min = max so random weights cannot stop early
    do_sample: bool = False  # greedy by default: the same image gives the same text
    temperature: float = 0.7  # used only when do_sample
    top_p: float = 0.9  # used only when do_sample
    seed: int = 0  # used only when do_sample
    # auto (= growing) | growing | static | cuda-graphs (CUDA only): how the fields are
    # decoded; the same text each way, only the speed differs
    decode_loop: str = "auto"


@dataclass
class ScanSettings:
    batch_size: int = 0  # images per model batch; 0 = a default for the device (cpu 8, cuda 32)
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    max_pixels: int = 400_000_000  # larger images are recorded as errors, never decoded
    decode_workers: int = 2  # threads decoding and resizing ahead of the model


@dataclass
class TrainSettings:
    feature_cache_gb: float = 20.0  # frozen vision features kept for fine-tuning; 0 = none
    loader_workers: int = 1  # processes decoding training images ahead of the model
    prefetch: int = 2  # batches each of them prepares ahead


@dataclass
class PromptSettings:
    # Grounded prompting: the facts of an image's object record (artnote import records:
    # title, maker, date, medium) go before each question, for scan and finetune alike.
    use_records: bool = False


@dataclass
class CatalogSettings:
    url: str = "artnote.db"  # a path (SQLite) or any SQLAlchemy URL


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)


_SHORTCUTS = {"ARTNOTE_CATALOG": ("catalog", "url"), "ARTNOTE_MODEL": ("model", "name")}


def load_settings(
    config_file: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Resolve settings in order: defaults, the TOML file, the environment, then overrides.

    `overrides` maps section -> key -> value; None values are ignored so that
    unset CLI flags do not mask the file or environment.
    """
    env = dict(os.environ) if env is None else env
    settings = Settings()
    path = _config_path(config_file, env)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        _apply(settings, data, source=str(path))
    _apply(settings, _from_env(settings, env), source="environment")
    if overrides:
        cleaned = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in overrides.items()}
        _apply(settings, cleaned, source="command line")
    _validate(settings)
    return settings


def _config_path(config_file: str | Path | None, env: dict[str, str]) -> Path | None:
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    if env.get("ARTNOTE_CONFIG"):
        return _config_path(env["ARTNOTE_CONFIG"], {})
    local = Path("artnote.toml")
    return local if local.is_file() else None


def _from_env(settings: Settings, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for var, (section, key) in _SHORTCUTS.items():
        if env.get(var):
            out.setdefault(section, {})[key] = env[var]
    for section_field in dataclasses.fields(settings):
        section = section_field.name
        for key_field in dataclasses.fields(getattr(settings, section)):
            var = f"ARTNOTE_{section}_{key_field.name}".upper()
            if var in env:
                out.setdefault(section, {})[key_field.name] = env[var]
    return out


def _apply(settings: Settings, data: dict[str, Any], source: str) -> None:
    for section, values in data.items():
        target = getattr(settings, section, None)
        if target is None or not dataclasses.is_dataclass(target) or not isinstance(values, dict):
            sections = [f.name for f in dataclasses.fields(settings)]
            raise ConfigError(
                f"unknown section [{section}] in {source}{_did_you_mean(section, sections)}"
            )
        types = {f.name: f for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown setting [{section}] {key} in {source}"
                    f"{_did_you_mean(key, list(types), section)}"
                )
            # The declared default gives the type (the current value may come from a file).
            declared = types[key]
            default = (
                declared.default_factory()
                if declared.default is dataclasses.MISSING
                and declared.default_factory is not dataclasses.MISSING
                else declared.default
            )
            setattr(target, key, _coerce(value, default, f"[{section}] {key}", source))


def _coerce(value: Any, default: Any, name: str, source: str) -> Any:
    """Convert a TOML value, or a string from the environment, to the type of the default:
    no silent rounding (2.9 is not an integer) and no numbers read as yes/no."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, bool | float):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        if value in ("", "none", "None") and default is None:
            return None
        return value if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} in {source}: cannot use {value!r}, expected {_kind(default)}"
        ) from None


def _kind(default: Any) -> str:
    """The expected type of a setting, in a user's words."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, list):
        return "a list of text (in the environment: comma-separated)"
    return "text"


def _did_you_mean(name: str, known: list[str], section: str | None = None) -> str:
    """'; did you mean [model] device?' for a near miss, else the names that exist."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {f'[{section}] ' if section else ''}{close[0]}?"
    return f" (known: {', '.join(known)})"


_CHOICES = {
    ("model", "device"): ("auto", "cpu", "cuda"),
    ("model", "dtype"): ("auto", "float32", "bfloat16", "float16"),
    ("model", "quantization"): ("none", "8bit", "4bit"),
    ("model", "encoder"): ("onnx", "torch"),
    ("model", "encoder_precision"): ("auto", "full", "int8"),
    ("generation", "decode_loop"): ("auto", "growing", "static", "cuda-graphs"),
}


def _validate(settings: Settings) -> None:
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(settings, section), key)
        if value not in allowed:
            raise ConfigError(
                f"[{section}] {key} must be one of {', '.join(allowed)}, not {value!r}"
            )
    if settings.model.max_image_side < 0:
        raise ConfigError(
            "[model] max_image_side must be 0 (the model's default) or a multiple of the "
            "model's tile size (SmolVLM: 512)"
        )
    if settings.scan.batch_size < 0:
        raise ConfigError("[scan] batch_size must be 0 (automatic) or a positive number")
    if settings.scan.max_pixels <= 0:
        raise ConfigError("[scan] max_pixels must be positive")
    if not settings.train.feature_cache_gb >= 0:
        raise ConfigError("[train] feature_cache_gb must be 0 (no cache) or more")
    if settings.train.loader_workers < 0 or settings.train.prefetch < 1:
        raise ConfigError("[train] loader_workers must be 0 or more, and prefetch at least 1")
    settings.scan.extensions = [e.lower().lstrip(".") for e in settings.scan.extensions]
