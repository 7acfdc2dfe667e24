"""Image -> embeddings: exactly what the language model receives for each image.

`TorchEncoder` runs the model's own get_image_features (vision tower + projector
or connector); it is the reference and the fallback. `OnnxEncoder` runs the frozen
part of that path (vision tower, BLIP-2's Q-Former) exported once to ONNX, in ONNX
Runtime, then the live projector in torch (see encoder_paths: the trainer shares the
frozen part, and a retrained projector needs no new export). Both return one tensor
(tokens, hidden) per image, in the language model's dtype and on its device, and
`encode_frozen` gives the frozen features alone (what the trainer caches).

The export is cached under cache_dir()/onnx, one folder per key: model id,
revision, family, dtypes, tile size, artnote/torch/transformers versions, and a
fingerprint of the frozen weights: a sample of every tensor of the vision tower
(and Q-Former), as a local folder keeps its name when its weights change. Processes
sharing the cache export each entry once, and never read half of one (onnx_cache).

Precision: on CPU the export is float32 (ORT's CPU kernels are float32 and it has
no bf16), cast to the language model's dtype afterwards. On CUDA a bf16/fp16
model is exported in float16 (ORT's CUDA provider runs fp16 well and bf16 barely;
bf16 pixels convert to fp16 exactly) and a float32 model in float32. Every session
is compared once with the torch path on a random tile before it is trusted.

With `[model] encoder_precision = "auto"` (the default) or "int8", the CPU runs a
copy whose MatMul weights are quantized to int8 per channel (ONNX Runtime's
dynamic quantization, cached beside the float32 file; 7-bit weights on CPUs
without VNNI, see artnote.model.int8): 1.7x faster per tile on a 2-core AVX-512
VNNI machine, at a relative error of about 3% on the embeddings. A copy that errs
by more than INT8_TOLERANCE on the check tile is not used: the float32 file is,
with one warning. "full" always runs the float32 (CPU) or float16 (CUDA) file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Protocol

from artnote import __version__
from artnote.errors import ArtnoteError, ConfigError, ModelError
from artnote.files import DiskFullError
from artnote.model.encoder_paths import encoder_extra, frozen_path, project, torch_frozen
from artnote.model.encoder_paths import encoder_modules as _encoder_modules
from artnote.model.families import inner_model, projector
from artnote.model.int8 import ensure_int8
from artnote.model.load import LoadedModel
from artnote.model.onnx_cache import KEEP_EXPORTS as KEEP_EXPORTS  # its old home
from artnote.model.onnx_cache import cache_dir, ensure_entry, trim_heap

log = logging.getLogger(__name__)

ENCODER_KINDS = ("onnx", "torch")
PRECISIONS = ("auto", "full", "int8")
ONNX_FILE = "encoder.onnx"
# Relative (Frobenius) error of int8 embeddings against torch's on the check tile. Over 10
# random tiny models per family (bench/int8_error.py) the right copy for the CPU errs by at
# most 0.024 (0.048 on a random SigLIP-B/16), and an 8-bit copy on an AVX2 CPU without VNNI,
# whose kernel saturates, by up to 0.20: this catches that kind of damage, not rounding.
INT8_TOLERANCE = 0.1
EXPORT_FORMAT = 3  # bump when the exported graph changes: old cached files are not reused
OPSET = 18  # runs on every onnxruntime we accept (>= 1.18), CPU and CUDA
# ONNX's own Attention op (opset 23) has a fused CPU kernel from onnxruntime 1.23: the int8
# SigLIP tower runs ~10% faster with it. The CUDA provider does not claim that op (it would
# run on the host), so CUDA exports stay at OPSET.
OPSET_CPU_ATTENTION = 23
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room for the graph
LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model")  # fixed input size, as exported


class ImageEncoder(Protocol):
    name: str

    def encode(self, pixel_inputs: dict[str, Any]) -> list[Any]: ...


TILES_PER_CALL_CPU = 8  # images (LLaVA) or tiles (Idefics3) per ONNX Runtime call
TILES_PER_CALL_CUDA = 64


class OnnxUnavailable(ModelError):
    """ONNX Runtime cannot run this model's encoder here; the torch encoder is used."""


class TorchEncoder:
    """The model's get_image_features (vision tower + projector/connector)."""

    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def encode(self, pixel_inputs: dict[str, Any]) -> list[Any]:
        import torch

        inner = inner_model(self.loaded.model)
        vision_dtype = next(inner.get_submodule(self.loaded.family.vision).parameters()).dtype
        moved = {
            k: v.to(self.loaded.device, dtype=vision_dtype if v.is_floating_point() else None)
            for k, v in pixel_inputs.items()
        }
        with torch.inference_mode():
            out = inner.get_image_features(**moved, return_dict=True)
        return [f.reshape(-1, f.shape[-1]).to(self.loaded.dtype) for f in out.pooler_output]

    def encode_frozen(self, pixel_inputs: dict[str, Any]) -> list[Any]:
        """Each image's features before the projector ((tiles,) tokens, F), in the tower's
        dtype: what `project_features` turns into what `encode` returns."""
        import torch

        with torch.inference_mode():
            return torch_frozen(self.loaded, pixel_inputs)


def project_features(loaded: LoadedModel, frozen: list[Any]) -> list[Any]:
    """Frozen features of each image (from `encode_frozen`) -> its embeddings (tokens,
    hidden) through the live projector, in the language model's dtype. Gradients flow
    into the projector unless called under torch.no_grad/inference_mode."""
    if not frozen:
        return []
    import torch

    proj = projector(loaded.model, loaded.family)
    weight = next(p for p in proj.parameters() if p.is_floating_point())
    frozen = [f.to(weight.device, weight.dtype) for f in frozen]  # before cat (autocast)
    shapes = [f.shape[0] if loaded.family.tiled else 1 for f in frozen]
    rows = torch.cat([f if loaded.family.tiled else f[None] for f in frozen])
    return project_rows(loaded, rows, shapes)


def project_rows(loaded: LoadedModel, rows: Any, counts: list[int]) -> list[Any]:
    """As project_features, from all images' frozen features already in one tensor
    (sum(counts), tokens, F): image i's are the next counts[i] rows (tiles, or 1)."""
    if not counts:
        return []
    out = project(loaded, rows).to(loaded.dtype)
    return [e.reshape(-1, e.shape[-1]) for e in out.split(counts)]


def make_encoder(loaded: LoadedModel, kind: str, precision: str = "full") -> ImageEncoder:
    """`onnx` or `torch`; onnx falls back to torch, with one warning, where ORT cannot run."""
    if kind not in ENCODER_KINDS:
        raise ConfigError(
            f"[model] encoder must be one of {', '.join(ENCODER_KINDS)}, not {kind!r}"
        )
    if precision not in PRECISIONS:
        raise ConfigError(
            f"[model] encoder_precision must be one of {', '.join(PRECISIONS)}, not {precision!r}"
        )
    if kind == "torch":
        return TorchEncoder(loaded)
    try:
        return OnnxEncoder(loaded, precision)
    except DiskFullError:
        raise  # the user's to fix: the torch path would hide it, and the next write fails too
    except Exception as exc:  # export and ORT fail in many ways; the torch path always works
        _warn_fallback(loaded, exc)
        return TorchEncoder(loaded)


class OnnxEncoder:
    """The encoder path in ONNX Runtime: CUDA provider with IO binding, or CPU provider.

    Also tells: path (the ONNX file), exported (this instance wrote it), provider,
    session_path (the file running: path or its int8 copy); name is "onnx-int8"
    while the int8 copy runs.
    """

    name = "onnx"

    def __init__(self, loaded: LoadedModel, precision: str = "full") -> None:
        import torch

        self.loaded = loaded
        self.device = loaded.device
        cpu = self.device.type == "cpu"
        if precision == "int8" and not cpu:
            log.warning(
                "encoder_precision int8 is for the CPU; the %s runs it in full", self.device
            )
        self.int8 = cpu and precision in ("auto", "int8")
        self.torch = TorchEncoder(loaded)  # for batches the export cannot take (see encode)
        _provider(self.device)  # before exporting: without a provider the export is moot
        _check_supported(loaded)
        half = self.device.type == "cuda" and loaded.dtype in (torch.bfloat16, torch.float16)
        self.export_dtype = torch.float16 if half else torch.float32
        self.vision_dtype = next(_encoder_modules(loaded)[0].parameters()).dtype
        size = inner_model(loaded.model).config.vision_config.image_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self._params = list(_encoder_modules(loaded)[0].parameters())
        self._params += [p for m in encoder_extra(loaded) for p in _parameters(m)]
        self._versions = [p._version for p in self._params]
        self._warned = False
        self._open(encoder_fingerprint(loaded))

    def _open(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.path, self.exported = ensure_onnx(
            self.loaded, self.export_dtype, self.size, fingerprint
        )
        if self.int8:
            try:
                self._start(ensure_int8(self.path), int8=True)
                self.name = "onnx-int8"
                return
            except DiskFullError:
                raise
            except Exception as exc:  # the float32 file is there and works: use it
                log.warning(
                    "int8 encoder not used (%s); running it in full precision", _reason(exc)
                )
        self._start(self.path, int8=False)
        self.name = "onnx"

    def _start(self, path: Path, int8: bool) -> None:
        self.session: Any = _session(path, self.device)
        self.quantized = int8
        self.run_options = _run_options(self.device)
        self.session_path = path
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.provider = self.session.get_providers()[0]
        dims = self.session.get_outputs()[0].shape[1:]
        if not all(isinstance(d, int) for d in dims):  # needed to preallocate bound outputs
            raise OnnxUnavailable(f"the exported encoder's output shape {dims} is not static")
        self.out_shape = tuple(dims)
        self._self_check(int8)

    def encode(self, pixel_inputs: dict[str, Any]) -> list[Any]:
        import torch

        self._refresh()
        if self.session is None:
            return self.torch.encode(pixel_inputs)
        frozen = self._frozen_rows(pixel_inputs)
        if frozen is None:
            return self.torch.encode(pixel_inputs)
        # Projected as ORT wrote them, in one tensor: project_features would first copy
        # them into another (torch.cat), hundreds of MB for a batch of SmolVLM tiles.
        with torch.inference_mode():
            return project_rows(self.loaded, *frozen)

    def encode_frozen(self, pixel_inputs: dict[str, Any]) -> list[Any]:
        """Each image's features before the projector, as ONNX Runtime computes them in
        this encoder's precision (the export's dtype); see TorchEncoder.encode_frozen."""
        self._refresh()
        if self.session is None:
            return self.torch.encode_frozen(pixel_inputs)
        frozen = self._frozen_rows(pixel_inputs)
        if frozen is None:
            return self.torch.encode_frozen(pixel_inputs)
        rows, counts = frozen
        return list(rows.split(counts)) if self.loaded.family.tiled else list(rows)

    def _frozen_rows(self, pixel_inputs: dict[str, Any]) -> tuple[Any, list[int]] | None:
        """ONNX Runtime's frozen features of all images in one tensor and how many rows
        of it are each image's (its tiles, or 1), or None for a batch it cannot take."""
        import torch

        pixels = pixel_inputs["pixel_values"]
        if pixels.shape[0] == 0:
            return pixels.new_empty((0,)), []
        if tuple(pixels.shape[-2:]) != self.size:
            self._note_torch_batch(f"images of {tuple(pixels.shape[-2:])} pixels")
            return None
        with torch.inference_mode():
            if not self.loaded.family.tiled:  # one whole image per row (llava, artgpt4)
                return self._run(pixels), [1] * pixels.shape[0]
            # Mirror Idefics3Model.get_image_features: cast to the tower's dtype, then drop
            # the all-zero padding tiles; each image keeps its real tiles, in order.
            batch, tiles = pixels.shape[:2]
            flat = pixels.reshape(batch * tiles, *pixels.shape[2:])  # a view: no copy
            # Not all zero: the same test as transformers' "count of zeros != numel".
            real = flat.reshape(batch * tiles, -1).ne(0.0).any(dim=1)
            counts = real.view(batch, tiles).sum(dim=1).tolist()
            mask = pixel_inputs.get("pixel_attention_mask")
            if mask is not None and not bool(mask.reshape(batch * tiles, -1)[real].all()):
                # The export assumes whole tiles, which SmolVLM's image splitting makes.
                self._note_torch_batch("tiles with padding inside")
                return None
            # The real tiles by index, gathered chunk by chunk in _run: a batch's pixels are
            # hundreds of MB, and a gathered copy of all of them would be as big again.
            return self._run(flat, real.nonzero().squeeze(1)), counts

    def _run(self, pixels: Any, rows: Any = None) -> Any:
        """(N, 3, H, W) -> frozen features (N, tokens, F) on the model's device, in the
        export's dtype; with `rows` (indices), of those rows of `pixels` only."""
        import torch

        count = pixels.shape[0] if rows is None else rows.shape[0]
        if self.device.type == "cpu":
            # Free heap the last batch left resident (its decoding, the language model's
            # work, ORT's arena chunks) goes back before this batch's attention maps:
            # measured ~0.7 GB after a cold cache's export had spread the heap.
            trim_heap()
        out = torch.empty((count, *self.out_shape), dtype=self.export_dtype, device=self.device)
        # A batch of 8 SmolVLM images is 100+ tiles: one ORT call would hold every tile's
        # attention maps at once (GBs). Chunks keep memory flat at no cost in speed, and
        # each chunk's input is made alone and its output written in place in `out`.
        step = TILES_PER_CALL_CUDA if self.device.type == "cuda" else TILES_PER_CALL_CPU
        if self.quantized:
            # Dynamic quantization scales a MatMul's activations per call (one scale for
            # the whole tensor): tiles sharing a call would change each other's features,
            # and an image's text would depend on its batch. One tile per call instead.
            step = 1
        for start in range(0, count, step):
            part = slice(start, start + step)
            chunk = pixels[part] if rows is None else pixels[rows[part]]
            # Through the tower's dtype first: ORT then sees exactly the pixels torch would.
            x = chunk.to(self.vision_dtype).to(self.device, self.export_dtype).contiguous()
            self._run_bound(x, out[part])
        return out

    def _run_bound(self, x: Any, out: Any) -> None:
        """IO binding, on either provider: ORT reads torch's input tensor and writes into
        the torch tensor `out` in place (on a GPU nothing crosses to the host; on the CPU
        no copy)."""
        import numpy as np
        import torch

        element = np.float16 if x.dtype == torch.float16 else np.float32
        kind, index = x.device.type, x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, kind, index, element, tuple(x.shape), x.data_ptr())
        binding.bind_output(
            self.output_name, kind, index, element, tuple(out.shape), out.data_ptr()
        )
        if kind == "cuda":  # ORT computes on its own stream: torch's writes to x come first
            torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding, self.run_options)
        binding.synchronize_outputs()

    def _note_torch_batch(self, why: str) -> None:
        if not self._warned:
            log.warning("ONNX encoder cannot take %s; such batches use the torch encoder", why)
            self._warned = True

    def _refresh(self) -> None:
        """Switch ONNX file when frozen weights changed in place (not by adapters: they
        retrain the projector, which runs live in torch; by a test or a user's own code).

        Tensor version counters make the check free on every batch; the hash runs only
        when one of them moved.
        """
        versions = [p._version for p in self._params]
        if versions == self._versions:
            return
        self._versions = versions
        fingerprint = encoder_fingerprint(self.loaded)
        if fingerprint == self.fingerprint:
            return
        log.info("encoder weights of %s changed: switching ONNX file", self.loaded.name)
        try:
            self._open(fingerprint)
        except DiskFullError:
            raise
        except Exception as exc:
            _warn_fallback(self.loaded, exc)
            self.session = None
            self.name = "torch"  # provenance must say what really computed the embeddings

    def _self_check(self, int8: bool) -> None:
        """Compare one random tile with the torch path before trusting the session.

        Full precision is held to the largest difference (relative to the largest
        value); int8 to the relative error over the whole output, since its
        rounding spreads over every value.
        """
        import torch

        tile = torch.rand((1, 3, *self.size), generator=torch.Generator().manual_seed(0)) * 2 - 1
        if not self.loaded.family.tiled:
            pixel_inputs = {"pixel_values": tile}
        else:
            mask = torch.ones((1, 1, *self.size), dtype=torch.long)
            pixel_inputs = {"pixel_values": tile[:, None], "pixel_attention_mask": mask}
        want = self.torch.encode(pixel_inputs)[0].float()
        with torch.inference_mode():
            frozen = self._run(tile)  # one image: its one tile, or its one row
            frozen = frozen if self.loaded.family.tiled else frozen[0]
            got = project_features(self.loaded, [frozen])[0].float()
        if int8:
            error = float((got - want).norm() / want.norm().clamp(min=1e-12))
            tolerance = INT8_TOLERANCE
        else:
            error = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
            exact = self.export_dtype == self.vision_dtype == torch.float32
            tolerance = 1e-3 if exact else 5e-2
        if not bool(torch.isfinite(got).all()) or error > tolerance:
            raise OnnxUnavailable(f"ONNX output differs from torch's (relative error {error:.2g})")


# ---- export and cache ---------------------------------------------------------


def encoder_fingerprint(loaded: LoadedModel) -> str:
    """Hash of a sample of the frozen tensors (vision tower, Q-Former) and their config."""
    import torch

    config = inner_model(loaded.model).config
    keys = ("scale_factor", "vision_feature_layer", "vision_feature_select_strategy",
            "projector_hidden_act", "multimodal_projector_bias")  # fmt: skip
    described = {"vision": config.vision_config.to_dict()}
    if getattr(config, "qformer_config", None) is not None:  # BLIP-2: the Q-Former's shape
        described["qformer"] = config.qformer_config.to_dict()
        described["num_query_tokens"] = config.num_query_tokens
    described.update({k: getattr(config, k, None) for k in keys})
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    vision = _encoder_modules(loaded)[0]
    tensors = sorted(vision.state_dict().items())
    for i, extra in enumerate(encoder_extra(loaded)):  # the Q-Former and its queries
        tensors += sorted((f"extra{i}.{n}", t) for n, t in _state(extra).items())
    sample = [t.detach().reshape(-1)[:16].float() for _, t in tensors if t.is_floating_point()]
    if sample:
        digest.update(_tensor_bytes(torch.cat(sample)))  # one copy to the host, not hundreds
    return digest.hexdigest()[:16]


def ensure_onnx(
    loaded: LoadedModel, dtype: Any, size: tuple[int, ...], fingerprint: str
) -> tuple[Path, bool]:
    """The cached ONNX file for this key, exported first if missing (one process at a time,
    see onnx_cache): (path, exported now)."""
    import torch
    import transformers

    opset = _opset(loaded.device)
    key = {
        "model": loaded.name, "revision": loaded.revision, "family": loaded.family.name,
        "lm_dtype": str(loaded.dtype), "export_dtype": str(dtype), "size": list(size),
        "fingerprint": fingerprint, "artnote": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "opset": opset, "format": EXPORT_FORMAT,
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", loaded.name.strip("/"))[-60:]
    prefix = f"{slug}-{loaded.family.name}-{str(dtype).removeprefix('torch.')}-"
    return ensure_entry(
        cache_dir() / "onnx" / (prefix + digest),
        ONNX_FILE,
        key,
        lambda path: export_onnx(loaded, path, dtype, size, opset),
        f"exporting the vision encoder of {loaded.name} to ONNX",
        prefix,
    )


def _opset(device: Any) -> int:
    """OPSET_CPU_ATTENTION for the CPU provider of onnxruntime >= 1.23, else OPSET."""
    import onnxruntime as ort

    version = tuple(int(p) for p in re.findall(r"\d+", ort.__version__)[:2])
    return OPSET_CPU_ATTENTION if device.type == "cpu" and version >= (1, 23) else OPSET


def export_onnx(
    loaded: LoadedModel, path: Path, dtype: Any, size: tuple[int, ...], opset: int = OPSET
) -> None:
    """Export the frozen part (encoder_paths) with a dynamic first axis (images or tiles)."""
    import torch

    module = frozen_path(loaded, dtype)
    example = torch.rand((2, 3, *size), dtype=dtype) * 2 - 1  # 2: a size-1 axis would be fixed
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # the live model's own modules may be in it: their mode is restored below
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices are noise
    try:
        # The exporter's progress lines would break our one-line message.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["pixel_values"],
                output_names=["features"],
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1)}},
                opset_version=opset,
                dynamo=True,
                external_data=weights > EXTERNAL_DATA_BYTES,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
        for m, training in modes:
            m.training = training


# ---- runtime ------------------------------------------------------------------


def _provider(device: Any) -> tuple[str, dict[str, Any]]:
    """The ORT provider for the model's device and its options; raise when there is none."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        extra = "gpu" if device.type == "cuda" else "cpu"
        raise OnnxUnavailable(
            f"onnxruntime cannot be imported ({_reason(exc)}; pip install 'artnote[{extra}]')"
        ) from None
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxUnavailable(
                "onnxruntime-gpu is not installed (pip install 'artnote[gpu]', in place of "
                "the cpu extra: the two ONNX Runtime packages conflict)"
            )
        return "CUDAExecutionProvider", {"device_id": device.index or 0}
    if device.type == "cpu":
        return "CPUExecutionProvider", {}
    raise OnnxUnavailable(f"ONNX Runtime has no provider for device {device.type!r}")


def _session(path: Path, device: Any) -> Any:
    import onnxruntime as ort

    wanted, provider_options = _provider(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's notices (nodes placed on CPU...) are not for users
    if wanted == "CPUExecutionProvider":
        options.intra_op_num_threads = _cores()
        # Spinning ORT threads would steal the cores torch needs for the language model next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [(wanted, provider_options)]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != wanted:
        # ORT quietly runs on the CPU when the CUDA provider fails to load (CUDA, cuDNN).
        raise OnnxUnavailable(f"ONNX Runtime could not start {wanted} (check CUDA and cuDNN)")
    return session


def _run_options(device: Any) -> Any:
    """On the CPU, ORT hands its arena's free chunks back after every call.

    A call of 8 SmolVLM tiles grows the arena by ~1.1 GB (attention maps), which it
    would otherwise keep for the life of the session, under everything the scan does
    next (the language model's prefill and decoding): a quarter of a scan's peak RSS.
    Growing it again costs nothing measurable (8 tiles, 6 interleaved calls on the 2-core
    CPU: best 21.19 s against 21.16 s keeping it; same outputs); a session without an
    arena (enable_cpu_mem_arena off) was ~20% slower (best 25.71 s).
    """
    import onnxruntime as ort

    if device.type != "cpu":
        return None  # the CUDA provider's arena is GPU memory, not this process's RSS
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _check_supported(loaded: LoadedModel) -> None:
    module = _encoder_modules(loaded)[0]  # the projector runs in torch, quantized or not
    quantized = any(type(m).__module__.startswith("bitsandbytes") for m in module.modules())
    if quantized or not all(p.is_floating_point() for p in module.parameters()):
        raise OnnxUnavailable("the vision tower has quantized weights")
    if loaded.family.name == "llava":
        tower = inner_model(loaded.model).config.vision_config.model_type
        if tower not in LLAVA_TOWERS:
            raise OnnxUnavailable(f"vision tower {tower!r} is not exported (only {LLAVA_TOWERS})")


def _parameters(part: Any) -> list[Any]:
    """A module's parameters, or a lone parameter (BLIP-2's query_tokens) as a list."""
    return list(part.parameters()) if hasattr(part, "parameters") else [part]


def _state(part: Any) -> dict[str, Any]:
    return part.state_dict() if hasattr(part, "state_dict") else {"": part.detach()}


def _tensor_bytes(tensor: Any) -> bytes:
    import torch

    return tensor.contiguous().cpu().view(torch.uint8).numpy().tobytes()  # numpy has no bf16


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # what this process may use (taskset, cgroups)
    return os.cpu_count() or 1


def _warn_fallback(loaded: LoadedModel, exc: BaseException) -> None:
    log.warning(
        "ONNX encoder unavailable for %s (%s); using the torch encoder", loaded.name, _reason(exc)
    )


def _reason(exc: BaseException) -> str:
    """One line for the log: our own messages as they are, others with their type."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, ArtnoteError) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
