import math

import pytest
import torch

from step_model.config import ModelConfig, preset
from step_model.model import Transformer, apply_rope, next_token_loss, rope_tables

HF_LLAMA_KEYS_LAYER0 = {
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
}


def small_model(**overrides: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{
            **dict(
                vocab_size=50,
                dim=32,
                n_layers=2,
                n_heads=4,
                n_kv_heads=4,
                ffn_dim=48,
                max_seq_len=64,
            ),
            **overrides,
        }
    )
    return Transformer(cfg)


def test_state_dict_uses_hugging_face_llama_names_and_no_biases() -> None:
    keys = set(Transformer(preset("debug")).state_dict())
    assert keys >= HF_LLAMA_KEYS_LAYER0
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= keys
    assert not any("bias" in k or "rope" in k for k in keys)


def test_embedding_and_head_are_untied() -> None:
    m = small_model()
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()


def test_output_shape() -> None:
    m = small_model()
    assert m(torch.randint(0, 50, (3, 17))).shape == (3, 17, 50)


def test_attention_is_causal() -> None:
    m = small_model()
    x = torch.randint(0, 50, (1, 20))
    y = x.clone()
    y[0, 12:] = (y[0, 12:] + 1) % 50
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[0, :12], b[0, :12], atol=1e-6)
    assert not torch.allclose(a[0, 12:], b[0, 12:], atol=1e-3)


def test_grouped_query_attention_runs_and_matches_shapes() -> None:
    m = small_model(n_kv_heads=2)
    assert m.model.layers[0].self_attn.k_proj.weight.shape == (16, 32)
    assert m(torch.randint(0, 50, (2, 9))).shape == (2, 9, 50)


def test_rope_is_a_rotation_by_position_times_frequency() -> None:
    """Rotate-half RoPE: dims (i, i + Dh/2) rotate by angle pos * theta^(-2i/Dh)."""
    head_dim, theta = 8, 10000.0
    cos, sin = rope_tables(head_dim, 16, theta)
    x = torch.randn(1, 1, 16, head_dim)
    y = apply_rope(x, cos, sin)
    pos, i = 5, 1
    angle = pos * theta ** (-2 * i / head_dim)
    a, b = x[0, 0, pos, i], x[0, 0, pos, i + head_dim // 2]
    assert math.isclose(
        float(y[0, 0, pos, i]), float(a * math.cos(angle) - b * math.sin(angle)), abs_tol=1e-5
    )
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_initial_loss_is_near_uniform_and_a_few_steps_reduce_it() -> None:
    m = small_model()
    x = torch.randint(0, 50, (4, 32))
    loss0 = next_token_loss(m(x), x).detach()
    assert abs(float(loss0) - math.log(50)) < 0.2
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(20):
        loss = next_token_loss(m(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss) < float(loss0) - 1.0


def test_too_long_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        small_model()(torch.zeros(1, 65, dtype=torch.long))
