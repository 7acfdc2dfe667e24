"""convert_artgpt4: the authors' checkpoint layout, built tiny and offline, to artnote's formats."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from artnote.model.convert_artgpt4 import ConversionError, convert_artgpt4

LAYERS, HIDDEN, QFORMER = 2, 64, 48


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny Vicuna-like Llama folder and a tiny BLIP-2 folder whose text part is T5."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        BlipImageProcessor,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from artnote.model.tiny import _TINY_TEXT, train_tokenizer

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    tokenizer = train_tokenizer([])
    llm_config = LlamaConfig(
        **{**_TINY_TEXT, "num_hidden_layers": LAYERS, "hidden_size": HIDDEN},
        # As Vicuna v0: one row more than its tokenizer.model has ([PAD], 32,001 vs 32,000)
        vocab_size=len(tokenizer) + 1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(llm_config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    t5 = {
        "model_type": "t5",
        "vocab_size": 64,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 1,
        "num_heads": 2,
    }
    blip2_config = Blip2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "hidden_size": QFORMER,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 96,
            "vocab_size": 50,
            "max_position_embeddings": 64,
        },
        text_config=t5,
        num_query_tokens=4,
    )
    Blip2ForConditionalGeneration(blip2_config).save_pretrained(root / "blip2")
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "blip2")
    return root


def released_layout(hidden: int = HIDDEN, layers: int = LAYERS, seed: int = 1) -> dict:
    """A checkpoint exactly as the authors' saver writes it, with random values."""
    g = torch.Generator().manual_seed(seed)
    model = {
        "llama_proj.weight": torch.randn(hidden, QFORMER, generator=g),
        "llama_proj.bias": torch.randn(hidden, generator=g),
        "Qformer.bert.embeddings.position_ids": torch.arange(512).expand(1, -1).clone(),
    }
    for i in range(layers):
        p = f"llama_model.model.layers.{i}."
        model[p + "self_attn.0.rotary_emb.inv_freq"] = torch.rand(8, generator=g)
        model[p + "self_attn.1.down.weight"] = torch.randn(hidden // 4, hidden, generator=g)
        model[p + "self_attn.1.down.bias"] = torch.randn(hidden // 4, generator=g)
        model[p + "self_attn.1.up.weight"] = torch.randn(hidden, hidden // 4, generator=g)
        model[p + "self_attn.1.up.bias"] = torch.randn(hidden, generator=g)
        model[p + "post_attention_layernorm.weight"] = torch.randn(hidden, generator=g)
        if i % 2 == 0:
            model[p + "input_layernorm.weight"] = torch.randn(hidden, generator=g)
    return {
        "model": model,
        "optimizer": {
            "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(hidden)}},
            "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0]}],
        },
        "config": {"model": {"arch": "mini_gpt4", "llama_model": "/data/vicuna-13b"}},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3},
        "epoch": 3,
    }


def artnote_name(key: str) -> str:
    """Where a checkpoint key lands in artnote's adapter file (model parameter names)."""
    if key.startswith("llama_proj."):
        return "language_projection." + key.rsplit(".", 1)[1]
    i = key.split(".")[3]
    if ".self_attn.1." in key:
        return f"artnote_adapters.{i}." + key.split(".self_attn.1.")[1]
    return "language_model.model.layers." + key.split("llama_model.model.layers.")[1]


def save(obj, path: pathlib.Path) -> pathlib.Path:
    torch.save(obj, path)
    return path


def nothing_written(out: pathlib.Path) -> bool:
    return not out.exists() and not any(
        p.name.startswith("." + out.name) for p in out.parent.iterdir()
    )


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_converts_every_trained_tensor_unchanged_and_never_reads_blip2s_t5(
    sources, tmp_path, monkeypatch
):
    import safetensors
    from safetensors.torch import load_file

    ckpt = released_layout()
    path = save(ckpt, tmp_path / "ArtGPT-4.pth")
    read: list[tuple[str, str]] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, handle, file):
            self._handle, self._file = handle, file

        def get_tensor(self, key):
            read.append((self._file, key))
            return self._handle.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self._handle, name)

    monkeypatch.setattr(
        safetensors, "safe_open", lambda file, **kw: Spy(real_open(file, **kw), file)
    )
    lines: list[str] = []
    report = convert_artgpt4(
        path, sources / "llm", sources / "blip2", tmp_path / "out", progress=lines.append
    )
    monkeypatch.undo()

    blip2_reads = [k for f, k in read if str(sources / "blip2") in f]
    assert blip2_reads and not [k for k in blip2_reads if k.startswith("language_model.")]
    assert all(k.startswith(("vision_model.", "qformer.", "query_tokens")) for k in blip2_reads)

    trained = [k for k in ckpt["model"] if k.rsplit(".", 1)[1] not in ("inv_freq", "position_ids")]
    assert sorted(report.converted) == sorted(trained)
    assert report.kind == "artgpt4" and report.unknown_keys == []
    assert sorted(report.skipped_buffers) == sorted(
        k for k in ckpt["model"] if k.endswith(("inv_freq", "position_ids"))
    )
    adapter = load_file(str(report.adapter_dir / "adapter.safetensors"))
    assert sorted(adapter) == sorted(artnote_name(k) for k in trained)
    for key in trained:
        assert torch.equal(adapter[artnote_name(key)], ckpt["model"][key]), key
    weights = load_file(str(report.model_dir / "model.safetensors"))
    assert torch.equal(weights["language_projection.weight"], ckpt["model"]["llama_proj.weight"])
    assert torch.equal(weights["language_projection.bias"], ckpt["model"]["llama_proj.bias"])
    assert report.image_token == {"token": "<image>", "id": report.llm_identity["vocab"] - 1}
    assert report.llm_identity["layers"] == LAYERS and report.llm_identity["hidden"] == HIDDEN
    assert any("Vicuna-13B v0" in w for w in report.warnings)  # a tiny LLM is not v0-shaped
    assert any("Vicuna-13B v0" in line for line in lines)
    assert sorted(os.listdir(tmp_path / "out")) == ["adapter", "model"]


def test_output_loads_with_transformers_and_equals_its_sources(sources, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    from artnote.model.adapters import load_adapter
    from artnote.model.families import family_of_config

    ckpt = released_layout()
    path = save(ckpt, tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    report = convert_artgpt4(
        path,
        sources / "llm",
        sources / "blip2",
        out,
        progress=lambda _: None,
        max_shard_bytes=200_000,
    )
    assert (report.model_dir / "model.safetensors.index.json").is_file()  # sharded path
    model, info = Blip2ForConditionalGeneration.from_pretrained(
        report.model_dir, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    blip2 = load_file(str(sources / "blip2" / "model.safetensors"))
    llm = load_file(str(sources / "llm" / "model.safetensors"))
    assert torch.equal(state["language_projection.weight"], ckpt["model"]["llama_proj.weight"])
    for key, value in blip2.items():
        if key.startswith(("vision_model.", "qformer.", "query_tokens")):
            assert torch.equal(state[key], value), key
    for key, value in llm.items():
        assert torch.equal(state["language_model." + key], value), key
    processor = AutoProcessor.from_pretrained(report.model_dir)
    # Blip2Processor's <image> took the spare row, as it does with v0's 32,000-token tokenizer
    assert len(processor.tokenizer) == model.config.text_config.vocab_size
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index
    assert processor.num_query_tokens == model.config.num_query_tokens == 4

    # artnote's own loader accepts the adapter on this model (fingerprint, names, shapes)
    load_adapter(
        model,
        report.adapter_dir,
        family=family_of_config(model.config),
        base_model=str(report.model_dir),
    )
    params = dict(model.named_parameters())
    for key in report.converted:
        assert torch.equal(params[artnote_name(key)], ckpt["model"][key]), key


class RunsCode:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_that_pickles_a_callable_is_refused_and_nothing_runs(sources, tmp_path):
    marker = tmp_path / "ran"
    ckpt = released_layout()
    ckpt["config"]["hook"] = RunsCode(marker)
    path = save(ckpt, tmp_path / "evil.pth")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as exc_info:
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    assert "refused" in one_line_error(exc_info)
    assert not marker.exists()
    assert nothing_written(out)


def test_a_missing_adapter_key_names_it_and_writes_nothing(sources, tmp_path):
    ckpt = released_layout()
    del ckpt["model"]["llama_model.model.layers.1.self_attn.1.up.bias"]
    path = save(ckpt, tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as exc_info:
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    assert "llama_model.model.layers.1.self_attn.1.up.bias" in one_line_error(exc_info)
    assert nothing_written(out)


@pytest.mark.parametrize("hidden,layers", [(32, LAYERS), (HIDDEN, LAYERS + 2)])
def test_a_checkpoint_of_another_llm_is_a_one_line_error_and_writes_nothing(
    sources, tmp_path, hidden, layers
):
    path = save(released_layout(hidden=hidden, layers=layers), tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as exc_info:
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    assert "not the model the checkpoint was trained on" in one_line_error(exc_info)
    assert nothing_written(out)


def test_a_minigpt4_checkpoint_converts_to_a_model_without_adapter(sources, tmp_path):
    """Also: a tokenizer that fills the vocabulary (v0 with added_tokens.json) leaves no row
    for <image>; the LLM's weights stay as they are and image_token_index unset."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    llm = shutil.copytree(sources / "llm", tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer.add_tokens(["[PAD]"])
    tokenizer.save_pretrained(llm)
    full = released_layout()
    ckpt = {"model": {k: full["model"][k] for k in ("llama_proj.weight", "llama_proj.bias")}}
    path = save(ckpt, tmp_path / "prerained_minigpt4.pth")
    report = convert_artgpt4(
        path, sources / "llm", sources / "blip2", tmp_path / "out", progress=lambda _: None
    )
    assert report.kind == "minigpt4" and report.adapter_dir is None
    assert sorted(os.listdir(tmp_path / "out")) == ["model"]
    weights = load_file(str(report.model_dir / "model.safetensors"))
    assert torch.equal(weights["language_projection.weight"], ckpt["model"]["llama_proj.weight"])


def test_an_out_folder_that_holds_something_is_refused(sources, tmp_path):
    path = save(released_layout(), tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not an empty folder"):
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    assert os.listdir(out) == ["keep.txt"]


def test_the_converted_model_and_adapter_scan(
    sources, tmp_path, onnx_cache, art_paths, monkeypatch
):
    """`artnote scan --model OUT/model --adapter OUT/adapter`: the artgpt4 family takes both."""
    import csv
    import io

    from typer.testing import CliRunner

    from artnote.cli import app
    from artnote.emotions import EMOTION_COLUMNS

    path = save(released_layout(), tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    report = convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    assert report.llm_identity["checkpoint_llama_model"] == "/data/vicuna-13b"
    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    for field_name in ("DESCRIPTION", "ALT_TEXT", "EXPLANATION"):
        monkeypatch.setenv(f"ARTNOTE_GENERATION_{field_name}_TOKENS", "6")
    runner = CliRunner()
    scan = [
        "scan",
        str(art_paths[0]),
        "--model",
        str(out / "model"),
        "--adapter",
        str(out / "adapter"),
    ]
    result = runner.invoke(app, [*scan, "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, ["export", "csv"])
    (row,) = list(csv.DictReader(io.StringIO(result.output)))
    assert row["model"] == str(out / "model") and row["adapter"]
    assert abs(sum(float(row[c]) for c in EMOTION_COLUMNS) - 1) < 1e-6


def test_blip2_shards_holding_only_t5_need_not_be_downloaded(sources, tmp_path):
    """With an index, only the shards of the vision model and Q-Former are opened."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    blip2 = tmp_path / "blip2"
    blip2.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(sources / "blip2" / name, blip2 / name)
    tensors = load_file(str(sources / "blip2" / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("language_")}
    save_file(kept, str(blip2 / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in kept}
    weight_map.update(
        {k: "model-00002-of-00002.safetensors" for k in tensors if k.startswith("language_")}
    )
    (blip2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    path = save(released_layout(), tmp_path / "ArtGPT-4.pth")
    report = convert_artgpt4(
        path, sources / "llm", blip2, tmp_path / "out", progress=lambda _: None
    )
    weights = load_file(str(report.model_dir / "model.safetensors"))
    assert torch.equal(weights["query_tokens"], tensors["query_tokens"])


def test_a_failure_while_writing_leaves_nothing_behind(sources, tmp_path, monkeypatch):
    from artnote.model import convert_artgpt4_io

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_artgpt4_io, "save_generation_config", disk_full)
    path = save(released_layout(), tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as exc_info:
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    message = one_line_error(exc_info)
    assert "no space left" in message and str(out) in message and " free " in message
    assert nothing_written(out)


def test_unknown_checkpoint_keys_are_listed_and_warned_about(sources, tmp_path):
    ckpt = released_layout()
    odd = "llama_model.model.layers.1.input_layernorm.weight"  # not in ArtGPT-4's trained set
    ckpt["model"][odd] = torch.ones(HIDDEN)
    path = save(ckpt, tmp_path / "ArtGPT-4.pth")
    lines: list[str] = []
    report = convert_artgpt4(
        path, sources / "llm", sources / "blip2", tmp_path / "out", progress=lines.append
    )
    assert report.unknown_keys == [odd] and odd not in report.converted
    assert any(odd in line and line.startswith("warning:") for line in lines)


def test_converted_logits_equal_minigpt4_forward_from_the_checkpoint(sources, tmp_path):
    """The converted model and adapter, loaded and run by artnote, give the logits of
    MiniGPT-4's forward written here from the released checkpoint's own tensors: ViT ->
    Q-Former -> llama_proj, spliced at <ImageHere> between two separately tokenized
    pieces; per layer h = x + attn(norm1(x)); h = h + up(gelu(down(h))); out = h +
    mlp(norm2(h)), with the checkpoint's adapters and norms (float32, 1e-4)."""
    import torch.nn.functional as F
    from PIL import Image

    from artnote.config import ModelSettings
    from artnote.model import inputs
    from artnote.model.adapters import load_adapter
    from artnote.model.encoder import TorchEncoder
    from artnote.model.families import language_model
    from artnote.model.load import load_model

    released = released_layout()
    out = tmp_path / "out"
    convert_artgpt4(
        save(released, tmp_path / "ArtGPT-4.pth"), sources / "llm", sources / "blip2", out,
        progress=lambda _: None,
    )  # fmt: skip
    loaded = load_model(ModelSettings(name=str(out / "model"), device="cpu", dtype="float32"))
    load_adapter(loaded.model, out / "adapter", family=loaded.family, base_model=loaded.name)
    fmt = inputs.prompt_format(loaded.model, loaded.processor, loaded.family)
    parts = fmt.parts("alt_text")
    image = Image.new("RGB", (48, 40), (200, 120, 40))
    with torch.no_grad():  # artnote's path
        enc = fmt.encode_prefix(parts.prefix, [image])
        features = TorchEncoder(loaded).encode(enc.pixels)
        prefix = inputs.embed_with_images(loaded.model, enc.input_ids, enc.image_mask, features)
        lm = language_model(loaded.model)
        suffix = lm.get_input_embeddings()(torch.tensor([fmt.suffix_ids(parts)]))
        got = loaded.model.get_output_embeddings()(
            lm(inputs_embeds=torch.cat([prefix, suffix], dim=1)).last_hidden_state
        )

    # The reference: frozen parts from the source folders, trained parts from the .pth.
    from transformers import Blip2ForConditionalGeneration, LlamaForCausalLM

    blip2 = Blip2ForConditionalGeneration.from_pretrained(sources / "blip2").eval()
    llama = LlamaForCausalLM.from_pretrained(sources / "llm").eval()
    ckpt = released["model"]
    tokenizer = loaded.processor.tokenizer
    question = parts.suffix.split("</Img> ")[1].split(" ###Assistant: ")[0]
    before, after = f"###Human: <Img><ImageHere></Img> {question} ###Assistant: ".split(
        "<ImageHere>"
    )

    def norm(x, weight, eps=llama.config.rms_norm_eps):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    with torch.no_grad():
        pixels = enc.pixels["pixel_values"]
        patches = blip2.vision_model(pixel_values=pixels).last_hidden_state
        queries = blip2.qformer(
            query_embeds=blip2.query_tokens.expand(1, -1, -1),
            encoder_hidden_states=patches,
            encoder_attention_mask=torch.ones(patches.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        image_embeds = F.linear(queries, ckpt["llama_proj.weight"], ckpt["llama_proj.bias"])
        first = tokenizer(before, add_special_tokens=True, return_tensors="pt").input_ids
        second = tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids
        embed = llama.model.embed_tokens
        x = torch.cat([embed(first), image_embeds, embed(second)], dim=1)
        pe = llama.model.rotary_emb(x, position_ids=torch.arange(x.shape[1])[None])
        for i, layer in enumerate(llama.model.layers):
            p = f"llama_model.model.layers.{i}."
            norm1 = ckpt.get(p + "input_layernorm.weight", layer.input_layernorm.weight)
            attn = layer.self_attn.forward(
                hidden_states=norm(x, norm1), attention_mask=None, position_embeddings=pe
            )[0]
            h = x + attn
            down = F.linear(
                h, ckpt[p + "self_attn.1.down.weight"], ckpt[p + "self_attn.1.down.bias"]
            )
            h = h + F.linear(
                F.gelu(down), ckpt[p + "self_attn.1.up.weight"], ckpt[p + "self_attn.1.up.bias"]
            )
            x = h + layer.mlp(norm(h, ckpt[p + "post_attention_layernorm.weight"]))
        want = llama.lm_head(llama.model.norm(x))
    assert got.shape[1] == want.shape[1]
    vocab = want.shape[-1]  # the converted model may carry one row more (<image>)
    torch.testing.assert_close(got[..., :vocab], want, rtol=1e-4, atol=1e-4)


def test_a_full_disk_while_safetensors_writes_a_shard_is_one_line(sources, tmp_path, monkeypatch):
    # safetensors writes shards from Rust: a full disk comes back as its SafetensorError.
    import safetensors.torch
    from safetensors import SafetensorError

    def disk_full(*_args, **_kwargs):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    path = save(released_layout(), tmp_path / "ArtGPT-4.pth")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as exc_info:
        convert_artgpt4(path, sources / "llm", sources / "blip2", out, progress=lambda _: None)
    message = one_line_error(exc_info)
    assert message.startswith(f"no space left to write {out / 'model' / 'model.safetensors'} (")
    assert " free on its volume" in message
    assert nothing_written(out)
