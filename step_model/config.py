"""Model configuration and the named presets.

Presets are code, not files: ``preset("debug")`` runs every test on a CPU in seconds, ``"7b"`` is
the Llama-2-7B shape. Every preset keeps the input embedding and the output head untied (Opacus
ghost clipping refuses tied weights) and uses no biases, so that the weights map 1:1 onto
Hugging Face's ``LlamaForCausalLM``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from step_common.errors import StepError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder-only transformer."""

    vocab_size: int
    """Rows of the input embedding and the output head; equals the tokenizer's vocabulary."""
    dim: int
    """Width of the residual stream (``hidden_size`` in Hugging Face terms)."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int
    """Attention heads for queries; ``head_dim = dim // n_heads``."""
    n_kv_heads: int
    """Heads for keys and values (grouped-query attention when smaller than ``n_heads``)."""
    ffn_dim: int
    """Hidden width of the SwiGLU MLP (``intermediate_size``)."""
    max_seq_len: int = 2048
    """Longest sequence the rotary tables are built for."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    init_std: float = 0.02
    """Std of the normal init (GPT-2 style); output projections are scaled by 1/sqrt(2 n_layers)."""

    def __post_init__(self) -> None:
        for f in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_dim",
            "max_seq_len",
        ):
            if getattr(self, f) <= 0:
                raise StepError(f"model config: {f} must be positive, got {getattr(self, f)}")
        if self.dim % self.n_heads:
            raise StepError(
                f"model config: dim {self.dim} is not divisible by n_heads {self.n_heads}: "
                "pick n_heads that divides dim"
            )
        if self.n_heads % self.n_kv_heads:
            raise StepError(
                f"model config: n_heads {self.n_heads} is not a multiple of n_kv_heads "
                f"{self.n_kv_heads}: pick n_kv_heads that divides n_heads"
            )
        if self.head_dim % 2:
            raise StepError(
                f"model config: head_dim {self.head_dim} must be even for rotary embeddings"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self) -> int:
        """Exact parameter count, computed from the shapes (the model's own count agrees)."""
        kv_dim = self.n_kv_heads * self.head_dim
        attn = 2 * self.dim * self.dim + 2 * self.dim * kv_dim  # q, o and k, v projections
        mlp = 3 * self.dim * self.ffn_dim  # gate, up, down
        per_layer = attn + mlp + 2 * self.dim  # two RMSNorm weights
        return self.n_layers * per_layer + 2 * self.vocab_size * self.dim + self.dim

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B style.

        6 FLOPs per non-embedding weight per token plus the attention scores:
        12 * n_layers * dim * seq_len (QK^T and AV, forward and backward).
        """
        non_embedding = self.num_params() - self.vocab_size * self.dim
        return 6 * non_embedding + 12 * self.n_layers * self.dim * seq_len

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        return replace(self, vocab_size=vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StepError(
                f"{source}: unknown model config keys {unknown}; allowed: {sorted(known)}"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise StepError(
                f"{source}: incomplete model config ({e}); allowed keys: {sorted(known)}"
            ) from None


# Byte-level vocabulary: 256 bytes + <|bos|>, <|eos|>, <|pad|> (see tokenizer.py).
BYTE_VOCAB = 259

PRESETS: dict[str, ModelConfig] = {
    # < 1M parameters: the CPU workhorse for tests and the 10-minute quality run.
    "debug": ModelConfig(
        vocab_size=BYTE_VOCAB,
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=4,
        ffn_dim=344,
        max_seq_len=1024,
    ),
    # ~10M: with an 8k BPE vocabulary.
    "tiny": ModelConfig(
        vocab_size=8192, dim=256, n_layers=8, n_heads=4, n_kv_heads=4, ffn_dim=688, max_seq_len=1024
    ),
    # ~50M: the model that must cross the wire in deployment tests.
    "small": ModelConfig(
        vocab_size=12288,
        dim=512,
        n_layers=12,
        n_heads=8,
        n_kv_heads=8,
        ffn_dim=1376,
        max_seq_len=2048,
    ),
    # ~125M: GPT-2-small scale, the GPU throughput reference.
    "base": ModelConfig(
        vocab_size=24576,
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        ffn_dim=2048,
        max_seq_len=2048,
    ),
    # ~1B: TinyLlama-like shape with grouped-query attention.
    "1b": ModelConfig(
        vocab_size=32768,
        dim=2048,
        n_layers=20,
        n_heads=32,
        n_kv_heads=4,
        ffn_dim=5632,
        max_seq_len=2048,
    ),
    # ~7B: the Llama-2-7B shape.
    "7b": ModelConfig(
        vocab_size=32768,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        ffn_dim=11008,
        max_seq_len=4096,
    ),
}

# The size each preset's name promises, to keep the table honest (tests check within 10%).
NOMINAL_PARAMS: dict[str, float] = {
    "debug": 0.9e6,
    "tiny": 10e6,
    "small": 50e6,
    "base": 125e6,
    "1b": 1e9,
    "7b": 7e9,
}


def preset(name: str) -> ModelConfig:
    """The named preset, or a StepError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise StepError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
