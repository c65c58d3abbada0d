from pathlib import Path

from step_model.checkpoint import load_checkpoint
from step_model.model import Transformer
from step_sim.centralized import PooledData, evaluate_pooled, run_centralized
from step_sim.config import load_sim_config
from tests.local_federation import write_sim_config

INSTITUTIONS = [
    {"name": "hellas", "languages": {"el": 1.0, "de": 0.5}},
    {"name": "baltic", "languages": {"et": 1.0, "de": 0.5}},
]


def test_the_baseline_uses_the_federations_token_budget_and_held_out_text(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg = write_sim_config(
        tmp_path / "sim.yaml", tiny_corpus, INSTITUTIONS, rounds=2, inner_steps=3
    )
    sim = load_sim_config(cfg)
    (tmp_path / "run").mkdir()
    summary = run_centralized(sim, tmp_path / "run")
    # rounds x H steps, each with every institution's local batch: the federation's tokens
    assert summary["steps"] == 6 and summary["batch"] == 4
    assert summary["tokens"] == 2 * 3 * 2 * 2 * 32
    assert set(summary["bpb"]) == {"de", "el", "et"}
    assert summary["allreduce_bytes"] == summary["params"] * 4 * 6 * 2
    # the final model is kept: loaded back, it scores what the run reported, on all held-out text
    ckpt = load_checkpoint(Path(summary["checkpoint"]), with_optimizer=False)
    assert ckpt.state["round"] == 2 and ckpt.state["mode"] == "centralized"
    model = Transformer(ckpt.config)
    model.load_state_dict(ckpt.weights)
    data = PooledData.load(sim, tmp_path / "run")
    again = evaluate_pooled(model, data.nodes, data.tok, sim.federation, final=True)
    assert again == summary["bpb"]
