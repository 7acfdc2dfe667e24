"""artnote against vLLM's offline batch inference, on the same work, side by side.

    python bench/peer_vllm.py [--shape smolvlm-256m|llava-1.5-7b] [--images N] [--tokens T]
                              [--json FILE]

The work is artnote's: per image, alt text, description and explanation (T generated
tokens each; the explanation names the dominant emotion), and the nine ArtEmis labels
scored after the emotion question. For vLLM it is written as vLLM would be used for it
(`plan()`): round 1, per image, the alt-text and description prompts (T tokens each,
greedy) and nine label prompts (the emotion question followed by each label, one token
generated, `prompt_logprobs` read for the label's tokens); round 2, the explanation
prompt for the dominant emotion. Prompt texts are artnote's own (artnote.model.inputs),
so both read the same tokens; vLLM runs with prefix caching on, so the image prefix is
computed once per image there too, and with `load_format="dummy"`: RANDOM weights of
the same architecture, as artnote's side has (bench/scan_bench.py builds both).

vLLM is not installed on the machines this was written on (and cannot be installed on
the lent GPU machine), so without it the script prints the plan's token accounting for
both engines and stops; the accounting is tested on the CPU (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@dataclass
class Request:
    """One vLLM request of the plan: a prompt, its image, what it generates."""

    image: int  # index of the image
    kind: str  # alt_text | description | label | explanation
    prompt: str  # chat-formatted text with the model's image placeholder
    max_tokens: int  # generated (min = max: random weights cannot stop early)
    label: str | None = None  # for "label": the emotion scored


def plan(processor: Any, images: int, tokens: int, dominant: list[str] | None = None):
    """The requests vLLM gets for artnote's work on `images` images: round 1 (alt text,
    description, nine labels) and, given each image's dominant emotion, round 2."""
    from artnote.emotions import EMOTIONS
    from artnote.model import inputs

    def text(field: str, emotion: str | None = None) -> str:
        parts = inputs.field_parts(processor, field, emotion)
        return parts.prefix + parts.suffix

    first: list[Request] = []
    for i in range(images):
        first.append(Request(i, "alt_text", text("alt_text"), tokens))
        first.append(Request(i, "description", text("description"), tokens))
        question = text("emotion")
        first += [Request(i, "label", f"{question} {e}", 1, label=e) for e in EMOTIONS]
    second = [
        Request(i, "explanation", text("explanation", emotion), tokens)
        for i, emotion in enumerate(dominant or ["something else"] * images)
    ]
    return first, second


def accounting(processor: Any, requests: list[Request], image_tokens: int) -> dict[str, int]:
    """Tokens each engine must process for the plan: vLLM's prompt tokens with prefix
    caching (each image's shared prefix once, then every request's own tokens) and its
    generated tokens; artnote shares the same prefix per image by construction."""
    tok = processor.tokenizer
    by_image: dict[int, list[list[int]]] = {}
    generated = 0
    for r in requests:
        by_image.setdefault(r.image, []).append(tok(r.prompt, add_special_tokens=False).input_ids)
        generated += r.max_tokens
    cached = 0
    for prompts in by_image.values():
        shared = _common_prefix(prompts)
        cached += shared + sum(len(p) - shared for p in prompts)
    return {
        "requests": len(requests),
        "prompt_tokens_with_prefix_cache": cached + image_tokens * len(by_image),
        "generated_tokens": generated,
    }


def _common_prefix(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = len(first)
    for p in prompts[1:]:
        n = next((k for k, (a, b) in enumerate(zip(first[:n], p, strict=False)) if a != b), n)
        n = min(n, len(p))
    return n


def run_vllm(model_dir: Path, paths: list[Path], tokens: int) -> float:
    """Both rounds through vLLM's offline LLM; seconds (model load outside the timing)."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    from artnote.emotions import EMOTIONS

    llm = LLM(model=str(model_dir), load_format="dummy", enable_prefix_caching=True, seed=0)
    processor = _processor(model_dir)
    pictures = [Image.open(p).convert("RGB") for p in paths]
    first, _ = plan(processor, len(pictures), tokens)

    def requests(rs: list[Request]) -> list[dict[str, Any]]:
        return [{"prompt": r.prompt, "multi_modal_data": {"image": pictures[r.image]}} for r in rs]

    text = SamplingParams(temperature=0, max_tokens=tokens, min_tokens=tokens)
    label = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    start = time.perf_counter()
    outs = llm.generate(requests(first), [text if r.kind != "label" else label for r in first])
    scores: dict[int, dict[str, float]] = {}
    for r, out in zip(first, outs, strict=True):
        if r.kind == "label":  # the label's own tokens: the prompt's tail after the question
            tail = [lp for lp in out.prompt_logprobs[-_label_length(processor, r) :] if lp]
            scores.setdefault(r.image, {})[r.label] = sum(
                next(iter(lp.values())).logprob for lp in tail
            )
    dominant = [max(EMOTIONS, key=lambda e, i=i: scores[i][e]) for i in range(len(pictures))]
    _, second = plan(processor, len(pictures), tokens, dominant)
    llm.generate(requests(second), text)
    return time.perf_counter() - start


def _label_length(processor: Any, r: Request) -> int:
    question = r.prompt[: -len(r.label) - 1]
    tok = processor.tokenizer
    return len(tok(r.prompt).input_ids) - len(tok(question).input_ids)


def _processor(model_dir: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(model_dir))


def model_folder(shape: str, work: Path) -> Path:
    """A model folder vLLM can load with load_format="dummy": the shape's config and its
    processor (no weights), the same architecture scan_bench builds for artnote."""
    from scan_bench import SHAPES

    from artnote.model import tiny

    spec = SHAPES[shape]
    tokenizer = tiny.family_tokenizer(spec["family"])
    config, processor = tiny.config_and_processor(spec["family"], tokenizer, spec)
    folder = work / shape
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["smolvlm-256m", "llava-1.5-7b"], default="smolvlm-256m")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import scan_bench

    result: dict[str, Any] = {"shape": args.shape, "images": args.images, "tokens": args.tokens}
    with tempfile.TemporaryDirectory(prefix="artnote-peer-") as tmp:
        work = Path(tmp)
        folder = model_folder(args.shape, work)
        processor = _processor(folder)
        first, second = plan(processor, args.images, args.tokens)
        image_tokens = _image_tokens(processor)
        result["vllm_plan"] = accounting(processor, first + second, image_tokens)
        try:
            import vllm  # noqa: F401
        except ImportError:
            result["vllm"] = "not installed: the plan's accounting only"
            _print(result, args.json)
            return result
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = scan_bench.build(args.shape, device, work)
        paths = scan_bench.make_collection(work / "images", args.images)
        summary, _ = scan_bench.run_artnote(loaded, work / "images", args.tokens, 0, work, "auto")
        result["artnote_images_per_s"] = args.images / summary.seconds
        del loaded
        seconds = run_vllm(folder, paths, args.tokens)
        result["vllm_images_per_s"] = args.images / seconds
        result["ratio"] = result["artnote_images_per_s"] / result["vllm_images_per_s"]
    _print(result, args.json)
    return result


def _image_tokens(processor: Any) -> int:
    """Positions one image fills in the prompt (the processor's expansion of the placeholder)."""
    from PIL import Image

    from artnote.model import inputs

    parts = inputs.field_parts(processor, "alt_text")
    image = Image.new("RGB", (512, 512))
    nested = type(processor).__name__.startswith(("Idefics", "SmolVLM"))
    enc = processor(text=[parts.prefix], images=[[image]] if nested else [image])
    plain = processor.tokenizer(parts.prefix, add_special_tokens=False).input_ids
    return len(enc["input_ids"][0]) - len(plain)


def _print(result: dict[str, Any], path: Path | None) -> None:
    for key, value in result.items():
        print(f"{key}: {value}")
    if path:
        path.write_text(json.dumps(result, indent=2, default=asdict))


if __name__ == "__main__":
    main()
