"""The decoding loops ([generation] decode_loop) give the same text: growing (the
default), static (fixed shapes) and, on CUDA, cuda-graphs (static, replayed as graphs)."""

from __future__ import annotations

import pytest
import torch

from artnote.config import GenerationSettings, ModelSettings
from artnote.errors import ModelError
from artnote.model.annotate import Annotator
from artnote.model.load import load_model

FAMILIES = ("llava", "smolvlm", "artgpt4")
_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _annotator(path, loop: str, device: str = "cpu", **gen) -> Annotator:
    if device == "cuda":  # float32 without TF32, so that greedy tokens compare exactly
        torch.backends.cuda.matmul.allow_tf32 = False
    loaded = load_model(ModelSettings(name=str(path), device=device, dtype="float32"))
    # Fields of different lengths, so columns finish at different steps.
    settings = GenerationSettings(
        alt_text_tokens=3, description_tokens=9, explanation_tokens=5, decode_loop=loop, **gen
    )
    return Annotator(loaded, settings)


def _texts(annotations):
    return [(a.alt_text, a.description, a.explanation) for a in annotations]


def _early_end(reference, images, contexts):
    """A token that one image's description generates early and others do not: made an
    end token, it finishes rows at different steps (random weights rarely end on their own)."""
    first = reference.annotate(images[:1], contexts[:1])[0]
    words = reference.tokenizer(first.description, add_special_tokens=False).input_ids
    return words[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_static_loop_decodes_what_the_growing_loop_decodes(tiny_models, art_images, family):
    growing = _annotator(tiny_models[family], "growing")
    static = _annotator(tiny_models[family], "static")
    assert (growing.decode_loop(), static.decode_loop()) == ("growing", "static")
    # Record contexts of different lengths: prompts of different widths, dead slots first.
    contexts = ["", "Title: The Harvesters. Date: 1565.", "", "Artist: Unknown.", "", "", "", ""]
    end = _early_end(growing, art_images, contexts)
    for annotator in (growing, static):
        annotator.eos_ids = annotator.eos_ids | {end}
    want = growing.annotate(art_images, contexts)
    got = static.annotate(art_images, contexts)
    assert _texts(got) == _texts(want)
    # Rows finished at different steps (the growing loop dropped some before others).
    lengths = {len(a.description.split()) for a in want}
    assert len(lengths) > 1, lengths
    for a, b in zip(got, want, strict=True):
        assert a.dominant_emotion == b.dominant_emotion
        torch.testing.assert_close(
            torch.tensor(a.extra["emotion_loglik"]), torch.tensor(b.extra["emotion_loglik"])
        )


def test_sampled_text_is_the_same_in_both_loops(tiny_models, art_images):
    """Each image draws from its own generator at every step it is decoded: a static tree
    keeps finished images in the batch, and that must not shift anyone's draws."""
    sampled = {"do_sample": True, "temperature": 1.5, "top_p": 0.95, "seed": 7}
    growing = _annotator(tiny_models["llava"], "growing", **sampled)
    static = _annotator(tiny_models["llava"], "static", **sampled)
    end = _early_end(growing, art_images, [""] * 8)
    for annotator in (growing, static):
        annotator.eos_ids = annotator.eos_ids | {end}
    want = growing.annotate(art_images)
    assert len({len(a.description.split()) for a in want}) > 1  # rows ended apart
    assert _texts(static.annotate(art_images)) == _texts(want)


def _step_shapes(path, loop: str, images) -> list:
    """(embeddings, mask) shapes of every language-model call decoding the text fields,
    after the one that feeds their prompts."""
    annotator = _annotator(path, loop)
    seen: list = []
    lm, generate = annotator.lm, annotator._generate

    def recording(*args, **kwargs):
        embeds, mask = kwargs["inputs_embeds"], kwargs["attention_mask"]
        seen.append((tuple(embeds.shape), tuple(mask.shape)))
        return lm(*args, **kwargs)

    def generating(*args, **kwargs):
        seen.clear()  # only the fields' decoding: its prompts' forward, then the steps
        return generate(*args, **kwargs)

    annotator.lm, annotator._generate = recording, generating
    annotator.annotate(images)
    return seen[1:]


def test_a_static_step_has_the_same_shapes_at_every_step(tiny_models, art_images):
    """What lets a CUDA graph replay it: every decoding step feeds the language model the
    same shapes (all rows, all fields, the whole cache), while the growing loop's change."""
    static = _step_shapes(tiny_models["smolvlm"], "static", art_images[:3])
    growing = _step_shapes(tiny_models["smolvlm"], "growing", art_images[:3])
    assert len(static) == len(growing) == 8  # the longest field's 9 tokens: 8 steps
    assert len(set(static)) == 1, static
    assert static[0][0] == (3, 3, static[0][0][2])  # every row, every field
    assert len(set(growing)) == 8  # its cache grows at every step


def test_cuda_graphs_on_a_cpu_model_is_one_clear_error(tiny_models, art_images):
    annotator = _annotator(tiny_models["llava"], "cuda-graphs")
    with pytest.raises(ModelError, match="cuda-graphs needs a CUDA device"):
        annotator.annotate(art_images[:1])


@_needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graphs_decode_what_the_growing_loop_decodes_cuda(tiny_models, art_images, family):
    growing = _annotator(tiny_models[family], "growing", "cuda")
    graphs = _annotator(tiny_models[family], "cuda-graphs", "cuda")
    assert graphs.decode_loop() == "cuda-graphs"
    want = growing.annotate(art_images)
    got = graphs.annotate(art_images)
    assert _texts(got) == _texts(want)
