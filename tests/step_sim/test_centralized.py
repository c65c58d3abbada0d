from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coordinator.rounds import RoundRunner
from step_common.errors import StepError
from step_model.checkpoint import load_checkpoint
from step_model.model import Transformer
from step_sim.centralized import PooledData, evaluate_pooled, run_centralized
from step_sim.config import load_sim_config
from step_sim.local_transport import LocalTransport
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


class Stop(Exception):
    """The process dying mid-run, after round ``at``'s records."""


def test_an_interrupted_baseline_resumes_bit_for_bit(tiny_corpus: Path, tmp_path: Path) -> None:
    """Checkpoints with the optimizer at every evaluation (rounds 2 and 4 here): killed in
    round 5, the run continues after round 4 and ends where an uninterrupted one does."""
    cfg = write_sim_config(tmp_path / "sim.yaml", tiny_corpus, INSTITUTIONS, rounds=6,
                           inner_steps=2, eval_every=2)  # fmt: skip
    sim = load_sim_config(cfg)
    whole = run_centralized(sim, tmp_path / "whole")

    def stop_in_round_5(record: dict[str, object]) -> None:
        if record["round"] == 5:
            raise Stop

    with pytest.raises(Stop):
        run_centralized(sim, tmp_path / "cut", on_record=stop_in_round_5)
    with pytest.raises(StepError, match="already holds a centralized run"):
        run_centralized(sim, tmp_path / "cut")
    resumed = run_centralized(sim, tmp_path / "cut", resume=True)
    assert resumed["mean_bpb"] == whole["mean_bpb"] and resumed["tokens"] == whole["tokens"]
    assert resumed["bpb"] == whole["bpb"]
    metrics = [(tmp_path / run / "metrics.jsonl").read_text() for run in ("whole", "cut")]
    assert metrics[0] == metrics[1]  # round 5's record, logged before the stop, is not twice
    final = [load_checkpoint(Path(s["checkpoint"])).weights for s in (whole, resumed)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def test_a_resume_with_other_settings_or_nothing_to_resume_is_refused(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    cfg = write_sim_config(tmp_path / "sim.yaml", tiny_corpus, INSTITUTIONS, rounds=2,
                           inner_steps=2, eval_every=1)  # fmt: skip
    sim = load_sim_config(cfg)
    with pytest.raises(StepError, match="nothing to resume"):
        run_centralized(sim, tmp_path / "run", resume=True)

    def stop_in_round_2(record: dict[str, object]) -> None:
        if record["round"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_centralized(sim, tmp_path / "run", on_record=stop_in_round_2)
    other = write_sim_config(tmp_path / "other.yaml", tiny_corpus, INSTITUTIONS, rounds=2,
                             inner_steps=2, eval_every=1, seed=1)  # fmt: skip
    with pytest.raises(StepError, match=r"different federation settings \['seed'\]"):
        run_centralized(load_sim_config(other), tmp_path / "run", resume=True)
    with pytest.raises(StepError, match="holds a centralized baseline, not a federation"):
        RoundRunner(sim.federation, tmp_path / "run", LocalTransport(cfg, tmp_path / "run", 2),
                    resume=True)  # fmt: skip
    with pytest.raises(StepError, match=r"resume with centralized_lr 0\.001"):
        run_centralized(replace(sim, centralized_lr=1e-3), tmp_path / "run", resume=True)
    assert run_centralized(sim, tmp_path / "run", resume=True)["steps"] == 4
