"""The per-device memory plan of an inner step (node/memory_plan.py)."""

from __future__ import annotations

from node.memory_plan import step_memory
from step_model.config import preset
from step_model.model import Transformer


def test_the_plan_counts_the_model_exactly_and_shrinks_as_it_should() -> None:
    config = preset("small").with_vocab(259)
    params = sum(p.numel() for p in Transformer(config).parameters())
    one = step_memory(config, 1, 8, 256, "fp32", checkpointing=False)
    assert (one.weights, one.gradients, one.optimizer) == (4 * params, 4 * params, 8 * params)
    assert one.gathered == 0  # nothing to gather on one device
    four = step_memory(config, 4, 8, 256, "fp32", checkpointing=False)
    assert four.weights * 4 >= one.weights > four.weights * 3  # sharded (rounded up)
    assert four.activations * 4 == one.activations  # each worker a quarter of the rows
    assert four.gathered > 0
    kept = step_memory(config, 1, 8, 256, "fp32", checkpointing=True)
    assert kept.activations < one.activations / 3  # only block inputs + one block
    half = step_memory(config, 4, 8, 256, "bf16", checkpointing=False)
    assert half.activations * 2 == four.activations and half.gathered * 2 == four.gathered
    assert half.optimizer == four.optimizer  # the AdamW state stays fp32
    assert one.total == sum(n for _, n in one.rows())
