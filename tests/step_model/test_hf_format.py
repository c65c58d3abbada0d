"""The Hugging Face format: a trained checkpoint exported with `step-model export --format hf`
loads in transformers with no custom code and computes the same logits (fp32, <= 1e-4) and
the same greedy continuation as step_model; a wrong q/k mapping would fail that; GQA, shards,
the BPE tokenizer, and the way back (`step-model import`) into a federation's warm start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from step_model.checkpoint import Checkpoint, load_checkpoint, seeded_weights
from step_model.cli import app
from step_model.config import preset
from step_model.hf_format import INDEX, export_hf, import_hf
from step_model.model import Transformer
from step_model.tokenizer import ByteTokenizer, Tokenizer, train_bpe

transformers = pytest.importorskip("transformers")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `debug` model trained 30 steps on real text (byte tokenizer)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "--corpus", str(tiny_corpus), "--steps", "30", "--batch-size", "4",
            "--seq-len", "64", "--warmup-steps", "2", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def text_of(corpus: Path) -> str:
    return (corpus / "valid" / "el.txt").read_text(encoding="utf-8")[:400]


def ours(ckpt: Checkpoint) -> Transformer:
    model = Transformer(ckpt.config).eval()
    model.load_state_dict(ckpt.weights)
    return model


def greedy(model: Transformer, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([out]))
            out.append(int(logits[0, -1].argmax()))
    return out[len(ids) :]


def assert_same_model(folder: Path, ckpt: Checkpoint, text: str) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = [int(i) for i in ckpt.tokenizer.encode(text)][:128]
    assert tok(text, add_special_tokens=False)["input_ids"][:128] == ids  # the same tokens
    x = torch.tensor([[ckpt.tokenizer.bos_id, *ids]])
    with torch.no_grad():
        diff = (ours(ckpt)(x) - hf(x).logits).abs().max()
    assert float(diff) <= 1e-4, float(diff)
    prompt = x[:, :16]
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=32, do_sample=False, min_new_tokens=32)
    assert theirs[0, 16:].tolist() == greedy(ours(ckpt), prompt[0].tolist(), 32)


def test_a_trained_checkpoint_exports_and_transformers_computes_the_same(
    trained: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", str(trained), str(out), "--format", "hf"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= names  # fmt: skip
    assert_same_model(out, load_checkpoint(trained, with_optimizer=False), text_of(tiny_corpus))


def test_a_swapped_q_k_layout_is_caught(trained: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    """The check above fails for an exporter that permuted q/k rows for an interleaved
    rotary layout (what Meta's Llama checkpoints need and this model must not get)."""
    ckpt = load_checkpoint(trained, with_optimizer=False)
    dh = ckpt.config.head_dim
    interleave = torch.arange(dh).view(2, dh // 2).t().reshape(-1)  # 0, dh/2, 1, dh/2 + 1 ...
    wrong = dict(ckpt.weights)
    for name, t in ckpt.weights.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = t.shape[0] // dh
            wrong[name] = t.view(heads, dh, -1)[:, interleave].reshape(t.shape)
    export_hf(dataclasses.replace(ckpt, weights=wrong), tmp_path / "wrong")
    with pytest.raises(AssertionError):
        assert_same_model(tmp_path / "wrong", ckpt, text_of(tiny_corpus))


def test_gqa_shards_and_the_way_back(tiny_corpus: Path, tmp_path: Path) -> None:
    """A `tiny` model with grouped-query attention (2 kv heads for 4), exported in shards,
    computes the same in transformers, and imports back bit for bit."""
    tok = ByteTokenizer()
    cfg = dataclasses.replace(preset("tiny"), n_kv_heads=2).with_vocab(tok.vocab_size)
    gen = torch.Generator().manual_seed(1)
    weights = {k: v + 0.01 * torch.randn(v.shape, generator=gen)  # not the init's symmetry
               for k, v in seeded_weights(cfg, 0).items()}  # fmt: skip
    ckpt = Checkpoint(cfg, weights, tok)
    told: list[tuple[int, int]] = []
    out = export_hf(ckpt, tmp_path / "hf", shard_bytes=4 * 2**20,
                    progress=lambda done, total: told.append((done, total)))  # fmt: skip
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert (out / INDEX).is_file() and len(shards) > 2
    total = sum(v.numel() * 4 for v in weights.values())
    assert told[0] == (0, total) and told[-1] == (total, total)  # then once per shard
    assert len(told) == len(shards) + 1 and told == sorted(set(told))  # growing, each once
    assert_same_model(out, ckpt, text_of(tiny_corpus))
    back = import_hf(out)
    assert back.config == cfg and back.tokenizer.name == "byte"
    assert all(torch.equal(back.weights[k], weights[k]) for k in weights)


def test_the_bpe_tokenizer_exports_and_an_import_warm_starts_a_run(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted((tiny_corpus / "train").glob("*.txt"))]
    tok: Tokenizer = train_bpe(texts, 320)
    cfg = preset("debug").with_vocab(tok.vocab_size)
    ckpt = Checkpoint(cfg, seeded_weights(cfg, 3), tok)
    out = export_hf(ckpt, tmp_path / "hf")
    assert_same_model(out, ckpt, text_of(tiny_corpus))
    step = tmp_path / "imported"
    result = runner.invoke(app, ["import", str(out), str(step), "--format", "hf"])
    assert result.exit_code == 0, result.output
    back = load_checkpoint(step, with_optimizer=False)
    assert back.tokenizer.to_json() == tok.to_json()
    assert all(torch.equal(back.weights[k], ckpt.weights[k]) for k in ckpt.weights)
    # the imported checkpoint starts a federation of the same model and tokenizer
    from step_model.checkpoint import initial_weights

    start = initial_weights(cfg, back.tokenizer, seed=0, init_from=str(step))
    assert all(torch.equal(start[k], ckpt.weights[k]) for k in ckpt.weights)


def test_what_is_not_this_model_family_is_refused(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    cfg = preset("debug").with_vocab(tok.vocab_size)
    out = export_hf(Checkpoint(cfg, seeded_weights(cfg, 0), tok), tmp_path / "hf")
    config = out / "config.json"
    config.write_text(config.read_text().replace('"mlp_bias": false', '"mlp_bias": true'))
    result = runner.invoke(app, ["import", str(out), str(tmp_path / "x")])
    assert result.exit_code == 2 and "mlp_bias" in result.stderr
    again = runner.invoke(app, ["export", str(out), str(tmp_path / "y"), "--format", "onnx"])
    assert again.exit_code == 2 and "--format 'onnx'" in again.stderr
