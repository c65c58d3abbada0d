"""The Hugging Face format: a folder that ``transformers`` loads with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` and no custom
code, and back (a published model warm-starts a federation: ``--init-from``).

The model is ``LlamaForCausalLM`` exactly: module names match (step_model/model.py) and the
rotary embedding rotates half-split pairs as transformers does, so the state dict maps 1:1, no
q/k permutation. ``config.json`` is written for transformers 5 (RoPE settings under
``rope_parameters``; the version pinned in the ``hf`` extra). Weights go to
``model.safetensors`` (``format: pt`` metadata), split into shards with an index above
``shard_bytes``. The BPE tokenizer is already a ``tokenizers`` JSON; the byte tokenizer is
written as one: byte-level BPE without merges whose token i is byte i.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from step_common.byte_progress import BytesDone
from step_common.errors import StepError
from step_common.fileio import atomic_directory, atomic_write_text
from step_model.checkpoint import Checkpoint
from step_model.config import ModelConfig
from step_model.tokenizer import (
    BOS,
    BYTE_TOKENIZER_KIND,
    EOS,
    PAD,
    ByteTokenizer,
    Tokenizer,
    tokenizer_from_json,
)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 2**30
"""transformers' own default for ``max_shard_size`` (5 GB)."""
STEP_KIND = "step_tokenizer"
"""tokenizer_config.json: which STEP tokenizer the files hold (for the way back)."""


def hf_config(cfg: ModelConfig, tok: Tokenizer) -> dict[str, Any]:
    """config.json of ``LlamaForCausalLM`` with the sizes, norms and RoPE base as trained."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.bos_id + 1,
        "pad_token_id": tok.bos_id + 2,
        "dtype": "float32",
    }


def model_config_of(doc: dict[str, Any], source: str) -> ModelConfig:
    """The ModelConfig of a LlamaForCausalLM config.json; StepError for what this model family
    does not have (biases, tied embeddings, scaled RoPE, another activation)."""
    if doc.get("model_type") != "llama":
        raise StepError(f"{source}: model_type {doc.get('model_type')!r}: only llama imports")
    unsupported = {
        "attention_bias": doc.get("attention_bias", False),
        "mlp_bias": doc.get("mlp_bias", False),
        "tie_word_embeddings": doc.get("tie_word_embeddings", False),
        "hidden_act": doc.get("hidden_act", "silu") != "silu",
    }
    rope = doc.get("rope_parameters") or {"rope_type": "default",
                                          "rope_theta": doc.get("rope_theta", 10000.0)}  # fmt: skip
    if rope.get("rope_type", "default") != "default":
        unsupported["rope_type"] = rope["rope_type"]
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise StepError(f"{source}: {bad} are not part of STEP's model family (untied, bias-free, "
                        "SwiGLU, plain RoPE): this model cannot be imported")  # fmt: skip
    heads = int(doc["num_attention_heads"])
    cfg = ModelConfig(
        vocab_size=int(doc["vocab_size"]),
        dim=int(doc["hidden_size"]),
        n_layers=int(doc["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(doc.get("num_key_value_heads") or heads),
        ffn_dim=int(doc["intermediate_size"]),
        max_seq_len=int(doc.get("max_position_embeddings", 2048)),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm_eps=float(doc.get("rms_norm_eps", 1e-5)),
        init_std=float(doc.get("initializer_range", 0.02)),
    )
    if doc.get("head_dim") not in (None, cfg.head_dim):
        raise StepError(f"{source}: head_dim {doc['head_dim']} is not hidden_size / heads "
                        f"({cfg.head_dim}): not part of STEP's model family")  # fmt: skip
    return cfg


def byte_tokenizer_json() -> str:
    """The byte tokenizer as a ``tokenizers`` JSON: token i < 256 is byte i (byte-level BPE,
    no merges), then <|bos|>, <|eos|>, <|pad|> as special tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # the 256 characters byte-level BPE maps bytes onto
    chars = sorted(alphabet, key=_byte_of)
    vocab = {c: i for i, c in enumerate(chars)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([BOS, EOS, PAD])
    return str(hf.to_str())


def _byte_of(char: str) -> int:
    """The byte a byte-level BPE character stands for (GPT-2's bytes_to_unicode, inverted)."""
    code = ord(char)
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def tokenizer_files(tok: Tokenizer, max_len: int) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    is_byte = isinstance(tok, ByteTokenizer)
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        STEP_KIND: BYTE_TOKENIZER_KIND if is_byte else "bpe",
    }
    return {
        "tokenizer.json": byte_tokenizer_json() if is_byte else tok.to_json(),
        "tokenizer_config.json": json.dumps(config, indent=1) + "\n",
        "special_tokens_map.json": json.dumps(specials, indent=1) + "\n",
    }


def export_hf(
    ckpt: Checkpoint,
    out: Path,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra: dict[str, str] | None = None,
    progress: BytesDone | None = None,
) -> Path:
    """Write ``ckpt`` into the new folder ``out`` (all of it or nothing); ``extra``: more
    text files to put beside it (a model card); ``progress`` is told of each weights file."""
    out = Path(out)
    if out.exists():
        raise StepError(f"{out} exists: export into a new folder (or remove it first)")
    with atomic_directory(out) as tmp:
        config = hf_config(ckpt.config, ckpt.tokenizer)
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=1) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id":
                      config["eos_token_id"], "pad_token_id": config["pad_token_id"]}  # fmt: skip
        atomic_write_text(tmp / "generation_config.json", json.dumps(generation, indent=1) + "\n")
        _write_weights(ckpt.weights, tmp, shard_bytes, progress or (lambda done, total: None))
        files = {**tokenizer_files(ckpt.tokenizer, ckpt.config.max_seq_len), **(extra or {})}
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
    return out


def _write_weights(
    weights: dict[str, torch.Tensor], folder: Path, shard_bytes: int, progress: BytesDone
) -> None:
    """One model.safetensors, or shards of at most ``shard_bytes`` and their index."""
    sizes = {k: v.numel() * v.element_size() for k, v in weights.items()}
    total = sum(sizes.values())
    tensors = {k: v.contiguous() for k, v in weights.items()}
    progress(0, total)
    if total <= shard_bytes:
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
        progress(total, total)
        return
    shards: list[list[str]] = [[]]
    held = 0
    for name in weights:  # in the state dict's order: a layer's tensors stay together
        if shards[-1] and held + sizes[name] > shard_bytes:
            shards.append([])
            held = 0
        shards[-1].append(name)
        held += sizes[name]
    count = len(shards)
    index: dict[str, str] = {}
    written = 0
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{count:05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(folder / file), metadata={"format": "pt"})
        index.update(dict.fromkeys(names, file))
        written += sum(sizes[n] for n in names)
        progress(written, total)
    doc = {"metadata": {"total_size": total}, "weight_map": index}
    atomic_write_text(folder / INDEX, json.dumps(doc, indent=1) + "\n")


def import_hf(folder: Path) -> Checkpoint:
    """A Hugging Face LlamaForCausalLM folder (as exported, or any model of this family) as a
    STEP checkpoint: weights, model config and tokenizer."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise StepError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = model_config_of(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
    weights = _read_weights(folder)
    expected = _shapes(cfg)
    wrong = sorted(k for k in expected if k not in weights or weights[k].shape != expected[k])
    extra = sorted(set(weights) - set(expected))
    if wrong or extra:
        raise StepError(f"{folder}: weights missing or of the wrong shape {wrong[:3]}, unknown "
                        f"{extra[:3]}: not a model of this config")  # fmt: skip
    tok = _read_tokenizer(folder)
    if tok.vocab_size != cfg.vocab_size:
        raise StepError(f"{folder}: the tokenizer has {tok.vocab_size} tokens, the model "
                        f"{cfg.vocab_size}: they do not belong together")  # fmt: skip
    fp32 = {k: v.to(torch.float32) for k, v in weights.items()}
    return Checkpoint(cfg, fp32, tok, {"imported_from": str(folder)})


def _shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from step_model.model import Transformer

    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(cfg).state_dict().items()}


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    if not (folder / INDEX).is_file():
        raise StepError(f"{folder} has neither {WEIGHTS} nor {INDEX}: no weights to import")
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(index.values())):
        out.update(load_file(str(folder / file)))
    return out


def _read_tokenizer(folder: Path) -> Tokenizer:
    config_file = folder / "tokenizer_config.json"
    kind = ""
    if config_file.is_file():
        kind = str(json.loads(config_file.read_text(encoding="utf-8")).get(STEP_KIND, ""))
    if kind == BYTE_TOKENIZER_KIND:
        return ByteTokenizer()
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise StepError(f"{folder} has no tokenizer.json: only fast (tokenizers) tokenizers "
                        "import")  # fmt: skip
    return tokenizer_from_json(path.read_text(encoding="utf-8"), str(path))


def shard_size(text: str) -> int:
    """``--shard-size`` (e.g. 5GB, 500MB, 2GiB) in bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    upper = text.strip().upper()
    for unit, scale in sorted(units.items(), key=lambda u: -len(u[0])):
        if upper.endswith(unit):
            number = upper[: -len(unit)].strip()
            try:
                return max(1, math.floor(float(number) * scale))
            except ValueError:
                break
    raise StepError(f"--shard-size {text!r}: give a size like 5GB, 500MB or 2GiB")


__all__ = ["export_hf", "import_hf", "shard_size"]
