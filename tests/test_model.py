"""Model core: adapter placement and identity, trainable set, adapter files, batching, scoring."""

from __future__ import annotations

import pytest
import torch
from conftest import whole_prompt_logliks

from artnote.config import GenerationSettings, ModelSettings
from artnote.emotions import EMOTIONS
from artnote.errors import AdapterError, ModelNotFoundError
from artnote.model import inputs
from artnote.model.adapters import (
    ADAPTER_FILE,
    adapters_of,
    attach_adapters,
    count_trainable,
    load_adapter,
    mark_trainable,
    save_adapter,
)
from artnote.model.annotate import Annotator, clean_alt_text
from artnote.model.families import family_for
from artnote.model.load import load_model
from artnote.model.tiny import build_tiny_model
from artnote.text import clean_text

FAMILIES = ("llava", "smolvlm")
SHORT = GenerationSettings(alt_text_tokens=6, description_tokens=10, explanation_tokens=6)


# The decoding tests also run on a GPU where there is one (in float32, without TF32, so
# that greedy tokens can be compared exactly); CI has none and runs them on the CPU.
_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
DEVICES = ("cpu", pytest.param("cuda", marks=_needs_cuda))


def _load(path, device="cpu", dtype="float32"):
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return load_model(ModelSettings(name=str(path), device=device, dtype=dtype))


def _logits(loaded, images):
    proc = loaded.processor
    prefix = inputs.field_parts(proc, "description")
    text = prefix.prefix + prefix.suffix
    nested = [[im] for im in images] if loaded.family.name == "idefics3" else images
    enc = proc(text=[text] * len(images), images=nested, return_tensors="pt", padding=True)
    with torch.no_grad():
        return loaded.model(**enc).logits


def _randomise(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_adapters_are_an_exact_identity(tiny_models, art_images, family):
    loaded = _load(tiny_models[family])
    base = _logits(loaded, art_images[:2])
    adapters = attach_adapters(loaded.model)
    assert torch.equal(_logits(loaded, art_images[:2]), base)
    for adapter in adapters:
        _randomise(adapter.up)
    assert not torch.allclose(_logits(loaded, art_images[:2]), base)


def test_adapter_placement_matches_hand_written_layer():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    (adapter,) = attach_adapters(model)
    _randomise(adapter)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        got = model(input_ids=ids).logits
        body = model.model
        x = body.embed_tokens(ids)
        pos = torch.arange(7)[None].expand(2, -1)
        pe = body.rotary_emb(x, position_ids=pos)
        layer = body.layers[0]
        # .forward() bypasses the hooks: this is the plain attention.
        attn = layer.self_attn.forward(
            hidden_states=layer.input_layernorm(x),
            attention_mask=None,
            position_embeddings=pe,
            position_ids=pos,
        )[0]
        h = x + attn
        h = h + adapter.up(torch.nn.functional.gelu(adapter.down(h)))
        out = h + layer.mlp(layer.post_attention_layernorm(h))
        want = model.lm_head(body.norm(out))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# Exact sizes for the tiny models (hidden 64, reduction 4, 2 layers):
# adapters 2 x (64*16+16 + 16*64+64) = 4256; post-attn norms 2 x 64; input norm of layer 0: 64;
# llava projector 32*64+64 + 64*64+64 = 6272; idefics3 connector (32*4)*64 = 8192 (no bias).
TRAINABLE = {"llava": 4256 + 128 + 64 + 6272, "smolvlm": 4256 + 128 + 64 + 8192}


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_set_is_artgpt4s(tiny_models, family):
    loaded = _load(tiny_models[family])
    attach_adapters(loaded.model)
    names = mark_trainable(loaded.model, loaded.family)
    assert count_trainable(loaded.model) == TRAINABLE[family]
    grad = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert grad == set(names)
    layer_norms = {n for n in names if "layernorm" in n}
    assert any(".0.input_layernorm" in n for n in layer_norms)
    assert not any(".1.input_layernorm" in n for n in layer_norms)
    assert sum("post_attention_layernorm" in n for n in layer_norms) == 2
    projector = "multi_modal_projector" if family == "llava" else "connector"
    assert any(projector in n for n in names)
    assert not any("vision" in n or "embed_tokens" in n or "lm_head" in n for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_save_load_round_trip(tiny_models, art_images, tmp_path, family):
    from safetensors import safe_open

    loaded = _load(tiny_models[family])
    attach_adapters(loaded.model)
    names = mark_trainable(loaded.model, loaded.family)
    for n, p in loaded.model.named_parameters():
        if n in names:
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.1)
    tuned = _logits(loaded, art_images[:2])
    config = save_adapter(
        loaded.model,
        tmp_path / "ad",
        family=loaded.family,
        base_model=loaded.name,
        base_revision=None,
    )
    with safe_open(str(tmp_path / "ad" / ADAPTER_FILE), "pt") as f:
        assert set(f.keys()) == set(names)
    assert len(config.content_hash) == 16

    fresh = _load(tiny_models[family])
    assert not torch.allclose(_logits(fresh, art_images[:2]), tuned)
    load_adapter(fresh.model, tmp_path / "ad", family=fresh.family, base_model=fresh.name)
    torch.testing.assert_close(_logits(fresh, art_images[:2]), tuned)


def test_adapter_refuses_another_base_model(tiny_models, tmp_path):
    loaded = _load(tiny_models["llava"])
    attach_adapters(loaded.model)
    save_adapter(
        loaded.model,
        tmp_path / "ad",
        family=loaded.family,
        base_model="museum/base-a",
        base_revision=None,
    )
    other = _load(build_tiny_model(tmp_path / "other", "llava", seed=7))
    with pytest.raises(AdapterError) as err:
        load_adapter(other.model, tmp_path / "ad", family=other.family, base_model="museum/base-b")
    assert "museum/base-a" in str(err.value) and "museum/base-b" in str(err.value)
    assert adapters_of(other.model) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_8_equals_one_by_one(tiny_models, art_images, family, device):
    annotator = Annotator(_load(tiny_models[family], device), SHORT)
    batch = annotator.annotate(art_images)
    assert len(batch) == 8
    for image, together in zip(art_images, batch, strict=True):
        (alone,) = annotator.annotate([image])
        assert alone.alt_text == together.alt_text
        assert alone.description == together.description
        assert alone.explanation == together.explanation
        torch.testing.assert_close(
            torch.tensor(alone.extra["emotion_loglik"]),
            torch.tensor(together.extra["emotion_loglik"]),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_annotation_fields(tiny_models, art_images, family):
    annotator = Annotator(_load(tiny_models[family]), SHORT)
    (a, b) = annotator.annotate(art_images[:2])
    for ann in (a, b):
        assert list(ann.emotions) == list(EMOTIONS)
        assert abs(sum(ann.emotions.values()) - 1) < 1e-9
        assert ann.dominant_emotion == max(ann.emotions, key=ann.emotions.get)
        assert ann.explanation.startswith(f"It makes me feel {ann.dominant_emotion} because")
        assert len(ann.alt_text) <= 125
        assert ann.provenance.family == family_for(annotator.model.config.model_type).name
        assert ann.provenance.prompt_hash and ann.provenance.ms > 0
    # Greedy decoding is deterministic.
    again = annotator.annotate(art_images[:2])
    assert [x.description for x in again] == [a.description, b.description]


@pytest.mark.parametrize(
    ("device", "dtype", "tolerance"),
    [
        ("cpu", "float32", 1e-4),
        pytest.param("cuda", "float32", 1e-4, marks=_needs_cuda),
        # bf16 as scans run on a GPU: the packed branches' additive mask in bf16 (a mask
        # that overflowed to -inf would give NaN rows); bf16 rounding sets the tolerance.
        pytest.param("cuda", "bfloat16", 0.1, marks=_needs_cuda),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_emotion_scoring_equals_brute_force(
    tiny_models, art_images, family, device, dtype, tolerance
):
    loaded = _load(tiny_models[family], device, dtype)
    annotator = Annotator(loaded, SHORT)
    images = art_images[:3]
    fast = annotator.emotion_logliks(images)
    parts = inputs.field_parts(loaded.processor, "emotion")
    for i, image in enumerate(images):
        want = whole_prompt_logliks(annotator, image, parts.prefix + parts.suffix)
        for k, emotion in enumerate(EMOTIONS):
            assert abs(float(fast[i, k]) - want[k]) < tolerance, (emotion, fast[i, k], want[k])


def test_missing_model_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model(ModelSettings(name="museum-nobody/not-a-model", device="cpu"))
    message = str(err.value)
    assert "museum-nobody/not-a-model" in message and "hf download" in message
    assert "\n" not in message


def test_alt_text_is_cut_at_a_word_and_flagged():
    text = "A " + "very " * 40 + "long sentence."
    alt, cut = clean_alt_text(text + "\nsecond line")
    assert cut and len(alt) <= 125 and alt.endswith("…") and " very…" in alt
    assert clean_alt_text("Short one.\nMore") == ("Short one.", False)


def test_pickled_model_weights_are_refused(tiny_models, tmp_path):
    import shutil

    from artnote.errors import ModelError

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["llava"], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled weights"):
        load_model(ModelSettings(name=str(folder), device="cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_fields_decode_what_generate_decodes_alone(tiny_models, art_images, family, device):
    """Each field, decoded as a branch packed beside the others, equals model.generate on
    that field's own prompt (prefix + suffix, batch 1, pixels): same greedy tokens."""
    loaded = _load(tiny_models[family], device)
    tokens = 8
    gen = GenerationSettings(
        alt_text_tokens=tokens,
        description_tokens=tokens,
        explanation_tokens=tokens,
        min_new_tokens=tokens,
    )
    annotator = Annotator(loaded, gen)
    assert any(len(ids) > 1 for ids in annotator.label_ids)  # the label branches are exercised
    images = art_images[:2]
    got = annotator.annotate(images)
    proc = loaded.processor
    nested = loaded.family.name == "idefics3"
    for image, ann in zip(images, got, strict=True):
        for field in ("alt_text", "description", "explanation"):
            emotion = ann.dominant_emotion if field == "explanation" else None
            parts = inputs.field_parts(proc, field, emotion)
            enc = proc(
                text=[parts.prefix + parts.suffix],
                images=[[image]] if nested else [image],
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                out = loaded.model.generate(
                    **enc,
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                    pad_token_id=proc.tokenizer.pad_token_id,
                    eos_token_id=sorted(annotator.eos_ids),  # the same end tokens as ours
                )
            new = out[0, enc["input_ids"].shape[1] :]
            text = proc.tokenizer.decode(new, skip_special_tokens=True)
            text = clean_text(text, multiline=True)[0]  # as the annotator stores it
            if field == "explanation":
                want = f"It makes me feel {emotion} because {text.strip()}"
                assert " ".join(ann.explanation.split()) == " ".join(want.split())
            elif field == "alt_text":
                assert ann.alt_text == clean_alt_text(text)[0]
            else:
                assert ann.description == " ".join(text.split())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_multi_token_labels_are_scored_apart(tiny_models, art_images, family, device):
    """Labels of several tokens (as real tokenizers split words) are packed side by side;
    each must score as if alone after the question."""
    loaded = _load(tiny_models[family], device)
    annotator = Annotator(loaded, SHORT)
    gen = torch.Generator().manual_seed(0)
    vocab = loaded.processor.tokenizer.vocab_size
    annotator.label_ids = [
        torch.randint(10, vocab, (1 + k % 3,), generator=gen).tolist() for k in range(9)
    ]
    image = art_images[0]
    fast = annotator.emotion_logliks([image])[0]
    parts = inputs.field_parts(loaded.processor, "emotion")
    nested = [[image]] if loaded.family.name == "idefics3" else [image]
    enc = loaded.processor(
        text=[parts.prefix + parts.suffix], images=nested, return_tensors="pt"
    ).to(device)
    for k, label in enumerate(annotator.label_ids):
        ids = torch.cat([enc["input_ids"], torch.tensor([label], device=device)], dim=1)
        full = {**enc, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(**full).logits[0].float(), dim=-1)
        start = enc["input_ids"].shape[1] - 1
        want = sum(logp[start + j, t] for j, t in enumerate(label))
        assert abs(float(fast[k]) - float(want)) < 1e-4, (k, fast[k], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_text_of_an_image_does_not_depend_on_its_batch(tiny_models, art_images, family):
    """With do_sample, each image draws from its own generator (seed and pixels): its text
    is the same alone, first or last in a batch; another seed gives other text."""
    loaded = _load(tiny_models[family])
    gen = GenerationSettings(
        alt_text_tokens=6, description_tokens=10, explanation_tokens=6, do_sample=True,
        temperature=1.5, top_p=0.95,
    )  # fmt: skip
    annotator = Annotator(loaded, gen)
    a, b, c = art_images[:3]

    def texts(anns):
        return [(x.alt_text, x.description, x.explanation) for x in anns]

    batch = texts(annotator.annotate([a, b, c]))
    assert texts(annotator.annotate([b])) == batch[1:2]
    assert texts(annotator.annotate([c, a])) == [batch[2], batch[0]]
    annotator.gen = GenerationSettings(**{**gen.__dict__, "seed": 1})
    assert texts(annotator.annotate([a, b, c])) != batch


@pytest.mark.parametrize("do_sample", [False, True])
def test_nan_scores_are_a_model_error_not_text(tiny_models, art_images, do_sample):
    """A model that gives NaN (broken weights, a bad kernel) fails its batch (the scan then
    retries and records the images as failed) instead of storing tokens picked from NaN."""
    from artnote.errors import ModelError

    loaded = _load(tiny_models["llava"])
    annotator = Annotator(loaded, GenerationSettings(**{**SHORT.__dict__, "do_sample": do_sample}))
    with torch.no_grad():
        annotator.head.weight.fill_(float("nan"))
    with pytest.raises(ModelError, match="NaN"):
        annotator.annotate(art_images[:1])
