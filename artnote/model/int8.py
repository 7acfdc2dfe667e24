"""The int8 copy of an exported encoder, quantized for the CPU it runs on.

ONNX Runtime's dynamic quantization makes uint8 activations and int8 weights
(per channel) and runs them with MatMulInteger. On x86 CPUs without VNNI its u8s8
kernel multiplies with VPMADDUBSW, which adds each pair of u8 x s8 products into
a *saturating* int16: 255 x 127 x 2 = 64770 does not fit, so large activations
against large weights are clipped. With reduce_range the weights are 7-bit
(-64..63): 255 x 64 x 2 = 32640 fits, and the kernel, hence the speed, is the same.
VNNI (AVX512-VNNI, AVX-VNNI, AMX) adds in int32, so there 8-bit weights are exact.

Measured by bench/int8_error.py on an AVX2 EPYC without VNNI, 10 tiny models per
family, relative error against torch per tile: 8-bit copy 0.010-0.20 (tiny LLaVA
median 0.08); 7-bit copy 0.013-0.024; the 8-bit copy computed exactly (ORT's U8U8
kernel, as on VNNI) 0.008-0.016. On a random SigLIP-B/16 at 512 px: 0.038, 0.048,
0.033. So 7-bit weights cost ~1.5x the error of exact 8-bit ones: paid only where
8-bit ones saturate, which is wherever the CPU is not known to have VNNI.
(session.x64quantprecision=1 would run the 8-bit copy exactly there too, but in
the U8U8 kernel, ~20% slower per tile in the same measurement.)

The two copies have different file names, so a cache folder shared by machines
of both kinds (a network home) holds both, and each machine opens its own. Each is
made by one process at a time, under its lock (files.entry_lock), and appears whole.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path

from artnote.errors import ModelError
from artnote.files import NO_SPACE, entry_lock, fsync_path, temporary_name, write_error
from artnote.model.onnx_cache import release_freed_memory, say_waiting

INT8_FILE = "encoder.int8.onnx"  # 8-bit weights: for CPUs with VNNI
INT8_REDUCED_FILE = "encoder.int8r.onnx"  # 7-bit weights (reduce_range): for all others
# /proc/cpuinfo flags of the instructions that add u8 x s8 products in int32 (no int16 step).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class Int8Unavailable(ModelError):
    """The int8 copy cannot be made here; the float32 file is used."""


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux, x86), or None where unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def reduce_range(flags: frozenset[str] | None = None) -> bool:
    """True (7-bit weights) unless the CPU is known to have VNNI."""
    flags = cpu_flags() if flags is None else flags
    return not (flags and flags & VNNI_FLAGS)


def int8_file(reduced: bool) -> str:
    return INT8_REDUCED_FILE if reduced else INT8_FILE


def ensure_int8(path: Path, reduced: bool | None = None) -> Path:
    """The int8 copy of the encoder at `path` for this CPU (or as `reduced` says), made once:
    by one process at a time (the others wait for it), under a temporary name renamed into
    place, so a reader finds the whole copy or none. A full disk is a DiskFullError naming
    the copy; any other failure an Int8Unavailable (the float32 file then runs)."""
    reduced = reduce_range() if reduced is None else reduced
    name = int8_file(reduced)
    target = path.with_name(name)
    if target.is_file():
        return target
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise Int8Unavailable(f"onnxruntime.quantization cannot be imported ({exc})") from None
    bits = "7-bit weights, for a CPU without VNNI" if reduced else "8-bit weights"
    doing = f"quantizing the vision encoder to int8 ({bits})"
    # A hidden lock file beside the copy (.NAME.lock), as for the entry (onnx_cache).
    with entry_lock(target.with_name("." + name), on_wait=say_waiting(doing)):
        if target.is_file():  # made by the process we waited for
            return target
        print(f"{doing}, once per model... ", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tmp = temporary_name(target)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer's advice goes to the root logger
        try:
            quantize_dynamic(
                str(path),
                str(tmp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=reduced,
                use_external_data_format=False,
            )
            fsync_path(tmp)  # the rename must publish the data, not a hole, even after a crash
            os.replace(tmp, target)  # whole or not at all
        except Exception as exc:
            print("failed", file=sys.stderr, flush=True)
            full = _no_space(exc)
            if full is not None:
                raise write_error(target, full) from None
            lines = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            raise Int8Unavailable(f"int8 quantization failed ({why})") from exc
        finally:
            root.setLevel(level)
            tmp.unlink(missing_ok=True)
            release_freed_memory()  # the quantizer's copies of the model
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return target


def _no_space(exc: BaseException | None) -> OSError | None:
    """The no-space OSError behind `exc` (the quantizer may wrap it), if any."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
