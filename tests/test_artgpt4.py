"""The artgpt4 family (ArtGPT-4 / MiniGPT-4 as BLIP-2 + Llama): prompt, adapters, encoder, loop."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from artnote.config import GenerationSettings, ModelSettings
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.model import inputs
from artnote.model.adapters import adapters_of, attach_adapters, count_trainable, mark_trainable
from artnote.model.annotate import Annotator
from artnote.model.encoder import OnnxEncoder, TorchEncoder, make_encoder
from artnote.model.families import family_for, language_model
from artnote.model.load import load_model

SHORT = GenerationSettings(alt_text_tokens=6, description_tokens=10, explanation_tokens=6)


def _load(path, dtype="float32"):
    return load_model(ModelSettings(name=str(path), device="cpu", dtype=dtype))


def test_blip2_with_a_llama_text_model_is_artgpt4(tiny_models):
    loaded = _load(tiny_models["artgpt4"])
    assert loaded.family.name == "artgpt4" and loaded.family.prompt == "minigpt4"
    config = loaded.model.config
    assert (config.model_type, config.text_config.model_type) == ("blip-2", "llama")
    assert type(loaded.model).__name__ == "Blip2ForConditionalGeneration"
    # get_decoder() is the causal-LM wrapper; the family's data finds the layers below it.
    assert language_model(loaded.model) is loaded.model.language_model.model
    with pytest.raises(Exception, match="'opt' language model is not supported"):
        family_for("blip-2", "opt")


def test_trainable_set_is_artgpt4s(tiny_models):
    loaded = _load(tiny_models["artgpt4"])
    attach_adapters(loaded.model)
    names = mark_trainable(loaded.model, loaded.family)
    layers = language_model(loaded.model).layers
    assert all(f"language_model.model.layers.{i}.post_attention_layernorm.weight" in names
               for i in range(len(layers)))  # fmt: skip
    assert "language_model.model.layers.0.input_layernorm.weight" in names
    assert "language_model.model.layers.1.input_layernorm.weight" not in names
    assert {"language_projection.weight", "language_projection.bias"} <= set(names)
    assert not any(n.startswith(("qformer", "vision_model", "query_tokens")) for n in names)
    # adapters 4256 + post-attn norms 128 + layer 0's input norm 64 + projection 32*64+64.
    assert count_trainable(loaded.model) == 4256 + 128 + 64 + 32 * 64 + 64


def _randomise_adapters(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters_of(model).parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _reference_logits(model, tokenizer, pixel_values, question):
    """MiniGPT-4's forward, written here without artnote's hooks or prompt code:
    ViT -> Q-Former -> projection, spliced between the two separately tokenized pieces
    of the prompt, then every Llama layer with the adapter after the attention add."""
    prompt = f"###Human: <Img><ImageHere></Img> {question} ###Assistant: "
    before, after = prompt.split("<ImageHere>")
    patches = model.vision_model(pixel_values=pixel_values).last_hidden_state
    queries = model.qformer(
        query_embeds=model.query_tokens.expand(patches.shape[0], -1, -1),
        encoder_hidden_states=patches,
        encoder_attention_mask=torch.ones(patches.shape[:-1], dtype=torch.long),
    ).last_hidden_state
    image = model.language_projection(queries)
    llama = model.language_model.model
    first = tokenizer(before, add_special_tokens=True, return_tensors="pt").input_ids
    second = tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids
    x = torch.cat([llama.embed_tokens(first), image, llama.embed_tokens(second)], dim=1)
    positions = torch.arange(x.shape[1])[None]
    pe = llama.rotary_emb(x, position_ids=positions)
    for layer, adapter in zip(llama.layers, adapters_of(model), strict=True):
        # .forward() runs the plain attention (no hooks); no mask: causal.
        attn = layer.self_attn.forward(
            hidden_states=layer.input_layernorm(x), attention_mask=None, position_embeddings=pe
        )[0]
        h = x + attn
        down = torch.nn.functional.linear(h, adapter.down.weight, adapter.down.bias)
        up = torch.nn.functional.linear(
            torch.nn.functional.gelu(down), adapter.up.weight, adapter.up.bias
        )
        h = h + up
        x = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.language_model.lm_head(llama.norm(x))


def test_logits_equal_a_minigpt4_forward_written_by_hand(tiny_models, art_images):
    loaded = _load(tiny_models["artgpt4"])
    attach_adapters(loaded.model)
    _randomise_adapters(loaded.model)
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    parts = fmt.parts("description")
    image = art_images[0]
    with torch.no_grad():
        # artnote's path: its prefix ids, encoder, scatter, suffix ids, hooked layers.
        enc = fmt.encode_prefix(parts.prefix, [image])
        features = TorchEncoder(loaded).encode(enc.pixels)
        prefix = inputs.embed_with_images(loaded.model, enc.input_ids, enc.image_mask, features)
        lm = language_model(loaded.model)
        suffix = lm.get_input_embeddings()(torch.tensor([fmt.suffix_ids(parts)]))
        hidden = lm(inputs_embeds=torch.cat([prefix, suffix], dim=1)).last_hidden_state
        got = loaded.model.get_output_embeddings()(hidden)
        want = _reference_logits(
            loaded.model,
            loaded.processor.tokenizer,
            enc.pixels["pixel_values"],
            parts.suffix.split("</Img> ")[1].split(" ###Assistant: ")[0],
        )
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The adapters really changed the output (the comparison is not of two plain models).
    for adapter in adapters_of(loaded.model):
        torch.nn.init.zeros_(adapter.up.weight)
        torch.nn.init.zeros_(adapter.up.bias)
    with torch.no_grad():
        plain = loaded.model.get_output_embeddings()(
            lm(inputs_embeds=torch.cat([prefix, suffix], dim=1)).last_hidden_state
        )
    assert not torch.allclose(plain, got, atol=1e-3)


def test_prompt_is_the_authors_in_two_pieces(tiny_models, art_images):
    loaded = _load(tiny_models["artgpt4"])
    tok = loaded.processor.tokenizer
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    parts = fmt.parts("alt_text")
    assert parts.prefix == "###Human: <Img><ImageHere>"
    assert parts.suffix.startswith("</Img> Write alt text") and parts.suffix.endswith(
        " ###Assistant: "
    )
    enc = fmt.encode_prefix(parts.prefix, art_images[:2])
    queries = loaded.model.config.num_query_tokens
    before = tok("###Human: <Img>", add_special_tokens=True)["input_ids"]
    assert before[0] == tok.bos_token_id  # BOS on the first piece only
    assert enc.input_ids[0, : len(before)].tolist() == before
    assert enc.image_mask[0].tolist() == [False] * len(before) + [True] * queries
    assert fmt.suffix_ids(parts) == tok(parts.suffix, add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in fmt.suffix_ids(parts)
    explanation = fmt.parts("explanation", "awe")
    assert explanation.suffix.endswith("###Assistant: It makes me feel awe because")


def test_training_targets_end_with_the_authors_end_sym(tiny_models):
    from trainer.data import Sample
    from trainer.objectives import Objective

    loaded = _load(tiny_models["artgpt4"])
    objective = Objective(loaded)
    tok = loaded.processor.tokenizer
    for sample in (
        Sample("x.jpg", "0" * 64, "description", text="A ship in a storm."),
        Sample("x.jpg", "0" * 64, "explanation", text="the waves.", dominant="fear"),
    ):
        _, answer = objective.answer_ids(sample)
        text = tok.decode(answer)
        assert text.endswith("###") and text.rstrip("#").strip().endswith(sample.text.rstrip())


def test_decoding_stops_at_the_end_sym(tiny_models, art_images):
    loaded = _load(tiny_models["artgpt4"])
    tok = loaded.processor.tokenizer
    (end,) = tok("###", add_special_tokens=False)["input_ids"]
    gen = GenerationSettings(alt_text_tokens=20, description_tokens=20, explanation_tokens=20)
    annotator = Annotator(loaded, gen)
    plain = annotator.annotate(art_images[:2])
    assert all(a.description for a in plain)  # without the bias the fields have text
    bias = torch.zeros(loaded.model.config.text_config.vocab_size)
    bias[end] = 1e4  # the model is made to say '###' at once
    head = loaded.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _a, out: out + bias)
    steps = []
    lm = language_model(loaded.model)
    counter = lm.register_forward_hook(lambda *_: steps.append(1))
    try:
        forced = annotator.annotate(art_images[:2])
    finally:
        handle.remove()
        counter.remove()
    for a in forced:
        assert a.alt_text == "" and a.description == ""  # cut at '###', which is not kept
        assert a.explanation == f"It makes me feel {a.dominant_emotion} because"
    # prefill, emotion question, label branches, the fields' prompts: then one token each,
    # which was '###', so decoding ended there instead of running 20 steps.
    assert len(steps) == 4


def test_stop_text_made_of_several_tokens_and_text_before_it(tiny_models):
    from artnote.model.annotate import _StopTexts

    loaded = _load(tiny_models["artgpt4"])
    tok = loaded.processor.tokenizer
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    stop = _StopTexts(tok, fmt.stop_texts)
    ids = tok("A ship.", add_special_tokens=False)["input_ids"]
    hashes = [tok.convert_tokens_to_ids("#")] * 3  # '###' spelt as three tokens
    assert not stop.reached(ids) and not stop.reached(ids + hashes[:2])
    assert stop.reached(ids + hashes)
    assert fmt.cut(tok.decode(ids + hashes + ids)) == "A ship."


def test_batch_of_8_equals_one_by_one(tiny_models, art_images):
    annotator = Annotator(_load(tiny_models["artgpt4"]), SHORT)
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


def test_emotion_scoring_equals_brute_force(tiny_models, art_images):
    """The packed label branches score what the whole prompt + label scores alone."""
    loaded = _load(tiny_models["artgpt4"])
    annotator = Annotator(loaded, SHORT)
    image = art_images[1]
    fast = annotator.emotion_logliks([image])[0]
    fmt = annotator.format
    enc = fmt.encode_prefix(annotator.prefix, [image])
    features = TorchEncoder(loaded).encode(enc.pixels)
    lm = language_model(loaded.model)
    with torch.no_grad():
        prefix = inputs.embed_with_images(loaded.model, enc.input_ids, enc.image_mask, features)
        for k, label in enumerate(annotator.label_ids):
            tail = torch.tensor([annotator.suffixes["emotion"] + label])
            embeds = torch.cat([prefix, lm.get_input_embeddings()(tail)], dim=1)
            logits = loaded.model.get_output_embeddings()(lm(inputs_embeds=embeds)[0])
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            start = embeds.shape[1] - len(label) - 1
            want = sum(logp[start + j, t] for j, t in enumerate(label))
            assert abs(float(fast[k]) - float(want)) < 1e-4, (EMOTIONS[k], fast[k], want)


@pytest.fixture
def onnx_cache_here(onnx_cache, monkeypatch):
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    return onnx_cache


@pytest.mark.slow
def test_onnx_encoder_equals_torch_and_int8_is_close(tiny_models, art_images, onnx_cache_here):
    loaded = _load(tiny_models["artgpt4"])
    encoder = make_encoder(loaded, "onnx")
    assert isinstance(encoder, OnnxEncoder) and encoder.name == "onnx"
    pixels = inputs.prompt_format(loaded.model, loaded.processor, loaded.family).encode_prefix(
        "", art_images
    )
    pixels = pixels.pixels
    want = TorchEncoder(loaded).encode(pixels)
    got = encoder.encode(pixels)
    queries = loaded.model.config.num_query_tokens
    assert [tuple(g.shape) for g in got] == [(queries, 64)] * 8
    # The other families' tolerances (tests/test_encoder.py): 1e-4 in full, 0.03 in int8.
    assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) <= 1e-4
    int8 = make_encoder(loaded, "onnx", "auto")
    assert int8.name == "onnx-int8"
    got8 = torch.cat(int8.encode(pixels)).float()
    error = float((got8 - torch.cat(want)).norm() / torch.cat(want).norm())
    assert 1e-3 < error <= 0.03, error


# ---- the product's loop on this family (as tests/test_loop.py for SmolVLM) ----------------

CORRECTED = "A small ship fights a stormy sea under a dark sky."


@pytest.fixture
def cli(tiny_models, onnx_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    monkeypatch.setenv("ARTNOTE_MODEL", str(tiny_models["artgpt4"]))
    monkeypatch.setenv("ARTNOTE_GENERATION_DESCRIPTION_TOKENS", "24")
    monkeypatch.setenv("ARTNOTE_GENERATION_ALT_TEXT_TOKENS", "8")
    monkeypatch.setenv("ARTNOTE_GENERATION_EXPLANATION_TOKENS", "8")
    runner = CliRunner()

    def run(*args, code: int = 0):
        result = runner.invoke(app_(), [str(a) for a in args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def app_():
    from artnote.cli import app

    return app


def _rows(cli, *extra) -> dict[str, dict[str, str]]:
    text = cli("export", "csv", *extra).stdout
    return {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(text))}


@pytest.fixture(scope="module")
def converted(tiny_models, tmp_path_factory) -> Path:
    """The tiny artgpt4 model taken apart into the three downloads a user starts from (a
    Llama folder, a BLIP-2 folder, and a checkpoint in the authors' layout holding trained,
    non-zero adapters and norms), put back together by `models convert-artgpt4`."""
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    from artnote.model.convert_artgpt4 import convert_artgpt4

    base = tmp_path_factory.mktemp("converted")
    source = Blip2ForConditionalGeneration.from_pretrained(tiny_models["artgpt4"])
    processor = AutoProcessor.from_pretrained(tiny_models["artgpt4"])
    source.language_model.save_pretrained(base / "llm")
    processor.tokenizer.save_pretrained(base / "llm")
    source.save_pretrained(base / "blip2")
    processor.image_processor.save_pretrained(base / "blip2")
    g = torch.Generator().manual_seed(7)
    hidden = source.config.text_config.hidden_size
    model = {
        "llama_proj.weight": source.language_projection.weight.detach().clone(),
        "llama_proj.bias": source.language_projection.bias.detach().clone(),
        "Qformer.bert.embeddings.position_ids": torch.arange(64).expand(1, -1).clone(),
    }
    for i in range(source.config.text_config.num_hidden_layers):
        p = f"llama_model.model.layers.{i}."
        model[p + "self_attn.0.rotary_emb.inv_freq"] = torch.rand(4, generator=g)
        for name, shape in (("down", (hidden // 4, hidden)), ("up", (hidden, hidden // 4))):
            model[p + f"self_attn.1.{name}.weight"] = torch.randn(shape, generator=g) * 0.02
            model[p + f"self_attn.1.{name}.bias"] = torch.randn(shape[0], generator=g) * 0.02
        model[p + "post_attention_layernorm.weight"] = 1 + 0.05 * torch.randn(hidden, generator=g)
        if i % 2 == 0:
            model[p + "input_layernorm.weight"] = 1 + 0.05 * torch.randn(hidden, generator=g)
    checkpoint = base / "ArtGPT-4.pth"
    torch.save(
        {"model": model, "optimizer": {}, "config": {}, "scaler": {}, "epoch": 1}, checkpoint
    )
    convert_artgpt4(checkpoint, base / "llm", base / "blip2", base / "out", progress=print)
    return base / "out"


@pytest.mark.slow
@pytest.mark.parametrize("start", ["tiny", "converted"])
def test_the_loop_closes_on_artgpt4(cli, art_paths, tmp_path, request, monkeypatch, start):
    """scan -> correct -> finetune -> a scan of a byte-different copy says what the curator
    said: on a tiny model, and on one converted from the authors' checkpoint layout, whose
    released adapter the scan applies and the fine-tuning continues from."""
    first: tuple[str, ...] = ()
    if start == "converted":
        out = request.getfixturevalue("converted")
        monkeypatch.setenv("ARTNOTE_MODEL", str(out / "model"))
        first = ("--adapter", str(out / "adapter"))
    folder = tmp_path / "collection"
    folder.mkdir()
    ship = next(p for p in art_paths if "minotaur" in p.name)
    other = next(p for p in art_paths if "udnie" in p.name)
    for p in (ship, other):
        shutil.copy2(p, folder / p.name)
    cli("scan", folder, *first, "--quiet")
    before = _rows(cli)
    for row in before.values():
        assert row["alt_text"] and row["description"] and row["explanation"]
        assert abs(sum(float(row[e]) for e in EMOTION_COLUMNS) - 1) < 1e-6
    assert before[ship.name]["description"] != CORRECTED
    assert all(bool(r["adapter"]) == bool(first) for r in before.values())  # released adapter
    cli("correct", folder / ship.name, "--description", CORRECTED, "--emotion", "fear")
    parent = ("--from-adapter", first[1]) if first else ()
    cli("finetune", "--epochs", "60", "--lr", "1e-2", "--name", "ships", *parent, "--quiet")
    listed = json.loads(cli("adapters", "list", "--json").stdout)
    assert [a["name"] for a in listed] == ["ships"]

    png = folder / "ship-copy.png"  # new bytes, same pixels
    Image.open(ship).convert("RGB").save(png)
    cli("scan", folder, "--adapter", "latest", "--quiet")
    copy = _rows(cli)["ship-copy.png"]
    assert copy["adapter"] and copy["description"] == CORRECTED
    assert copy["dominant_emotion"] == "fear"
    _assert_onnx_provenance(tmp_path / "catalog.db")


def _assert_onnx_provenance(db: Path) -> None:
    """Every annotation's embeddings came from the ONNX encoder, not the torch fallback."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        found = []
        for table in tables:
            columns = [r[1] for r in conn.execute(f"pragma table_info({table})")]
            if "provenance" in columns:
                found += [json.loads(r[0]) for r in conn.execute(f"select provenance from {table}")]
    assert found
    assert {p["encoder"] for p in found} <= {"onnx", "onnx-int8"}, found
    assert {p["family"] for p in found} == {"artgpt4"}
