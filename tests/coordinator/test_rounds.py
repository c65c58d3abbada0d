import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.config import load_federation_config
from coordinator.replies import TrainReply
from coordinator.rounds import RoundRunner
from coordinator.strategy.fold import RoundAggregate
from step_common.errors import StepError
from tests.local_federation import LocalTransport, write_sim_config

INSTITUTIONS = [
    {"name": "hellas", "languages": {"el": 1.0, "de": 0.5}},
    {"name": "baltic", "languages": {"et": 1.0, "de": 0.5}},
]


def run(tmp: Path, corpus: Path, name: str, resume: bool = False, **fed: object) -> RoundRunner:
    cfg_file = write_sim_config(tmp / f"{name}.yaml", corpus, INSTITUTIONS, **fed)
    cfg = load_federation_config(cfg_file)
    run_dir = tmp / name
    return RoundRunner(cfg, run_dir, LocalTransport(cfg_file, run_dir, 2), resume=resume)


def test_two_rounds_of_diloco_train_evaluate_and_checkpoint(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    runner = run(tmp_path, tiny_corpus, "a")
    summary = runner.run()
    assert summary["rounds"] == 2 and summary["nodes"] == 2
    assert set(summary["bpb"]) == {"de", "el", "et"} and 0 < summary["mean_bpb"] < 9
    assert summary["tokens"] == 2 * 2 * 3 * 2 * 32  # rounds x nodes x H x batch x seq
    # rounds x nodes x (fp32 update + int32 token counts), less the embedding rows of the
    # tokens a node did not see (seen_rows: embedding)
    vocab, dim = runner.shapes["model.embed_tokens.weight"]
    whole = 2 * 2 * (runner.params * 4 + vocab * 4)
    assert whole - 2 * 2 * vocab * dim * 4 < summary["bytes_up"] < whole
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["round"]) for r in records] == [
        ("round", 1),
        ("eval", 1),
        ("round", 2),
        ("eval", 2),
    ]
    assert (tmp_path / "a" / "nodes" / "hellas" / "rounds").is_dir()


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    straight = run(tmp_path, tiny_corpus, "straight", rounds=3)
    straight.run()
    part = run(tmp_path, tiny_corpus, "resumed", rounds=3)
    # A crash after round 2 was committed, when the nodes had already trained round 3.
    for r in (1, 2):
        part.train_round(r)
        part.round = r
        part._save()
    part.train_round(3)  # trained, never committed
    resumed = run(tmp_path, tiny_corpus, "resumed", resume=True, rounds=3)
    assert resumed.round == 2
    resumed.run()
    for k, v in straight.weights.items():
        assert torch.equal(v, resumed.weights[k]), k


def test_fedavg_is_the_token_weighted_mean_of_local_models(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    runner = run(tmp_path, tiny_corpus, "f", strategy="fedavg", rounds=1, token_rows=False)
    before = {k: v.clone() for k, v in runner.weights.items()}
    seen: list[TrainReply] = []
    start = runner.strategy.start

    def spy(*args: Any, **kw: Any) -> RoundAggregate:
        aggregate = start(*args, **kw)
        add = aggregate.add

        def add_spied(reply: TrainReply) -> None:
            # Both nodes trained on as many tokens; claim 3x for the second so that the
            # weighting shows (a plain mean would miss the expected weights by a quarter of the
            # difference).
            if seen:
                reply = replace(reply, num_tokens=3 * reply.num_tokens)
            seen.append(reply)
            add(reply)

        aggregate.add = add_spied  # type: ignore[method-assign]
        return aggregate

    runner.strategy.start = spy  # type: ignore[method-assign]
    runner.train_round(1)
    assert len(seen) == 2 and seen[1].num_tokens == 3 * seen[0].num_tokens > 0
    total = sum(r.num_tokens for r in seen)
    for k in before:  # each node's local model is the global one minus its update
        local = [before[k] - r.delta[k] for r in seen]
        expected = sum(r.num_tokens / total * m for r, m in zip(seen, local, strict=True))
        assert torch.allclose(runner.weights[k], expected, atol=1e-6), k
    assert not torch.allclose(seen[0].delta["lm_head.weight"], seen[1].delta["lm_head.weight"])


def test_a_silent_node_below_min_nodes_fails_the_round_with_reasons(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    runner = run(tmp_path, tiny_corpus, "m", min_nodes=2)
    assert isinstance(runner.transport, LocalTransport)
    runner.transport.drop.add(101)
    with pytest.raises(StepError, match=r"1 usable updates, federation\.min_nodes is 2"):
        runner.run()


def test_a_straggler_is_dropped_from_the_round_and_reported(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    runner = run(tmp_path, tiny_corpus, "s", min_nodes=1)
    assert isinstance(runner.transport, LocalTransport)
    runner.transport.drop.add(101)  # never answers within the round's deadline
    runner.run()
    rounds = [h for h in runner.history if h["kind"] == "round"]
    name = runner.transport.names[101]
    assert all(r["nodes"] == 1 and r["missing"] == [name] for r in rounds)


def test_a_node_error_is_reported_and_the_others_carry_on(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    bad = [*INSTITUTIONS, {"name": "lost", "languages": {"fi": 1.0}}]  # no Finnish in the corpus
    cfg_file = write_sim_config(tmp_path / "e.yaml", tiny_corpus, bad, rounds=1)
    runner = RoundRunner(
        load_federation_config(cfg_file),
        tmp_path / "e",
        LocalTransport(cfg_file, tmp_path / "e", 3),
    )
    runner.run()
    rec = json.loads((tmp_path / "e" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["nodes"] == 2 and "fi" in rec["rejected"]["lost"]


def test_compressed_traffic_is_counted_as_sent(tiny_corpus: Path, tmp_path: Path) -> None:
    runner = run(
        tmp_path,
        tiny_corpus,
        "q",
        rounds=1,
        eval_every=5,
        update_encoding="int8",
        broadcast_encoding="bf16",
        seen_rows="none",  # every row travels: exact sizes
    )
    summary = runner.run()
    rows = sum(s[0] if len(s) >= 2 else 1 for s in runner.shapes.values())
    vocab = runner.tokenizer.vocab_size
    config = runner.round_config(1)
    text = len(config.tokenizer) + len(config.model_json)
    # per node: int8 update + one bf16 scale per row + int32 token counts up; bf16 weights down
    assert summary["bytes_up"] == 2 * (runner.params + 2 * rows + 4 * vocab)
    assert summary["bytes_down"] == 2 * 2 * (2 * runner.params + text)  # train + final eval
    assert 0 < summary["mean_bpb"] < 9


def test_init_from_a_checkpoint_starts_both_modes_from_its_weights(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    from step_model.checkpoint import Checkpoint, initial_weights, save_checkpoint
    from step_model.config import preset
    from step_model.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    config = preset("debug").with_vocab(tok.vocab_size)
    warm = initial_weights(config, tok, seed=123)
    save_checkpoint(tmp_path / "warm", Checkpoint(config, warm, tok))
    runner = run(tmp_path, tiny_corpus, "w", init_from=str(tmp_path / "warm"))
    for k, v in warm.items():
        assert torch.equal(runner.weights[k], v), k
    cold = run(tmp_path, tiny_corpus, "c")
    assert not torch.equal(
        cold.weights["model.embed_tokens.weight"], warm["model.embed_tokens.weight"]
    )
    with pytest.raises(StepError, match="its model differs"):
        run(tmp_path, tiny_corpus, "t", init_from=str(tmp_path / "warm"), preset="tiny")
    with pytest.raises(StepError, match="does not exist"):
        run(tmp_path, tiny_corpus, "m", init_from=str(tmp_path / "missing"))


def test_interim_evaluation_rides_on_the_next_train_message(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    piggy = run(tmp_path, tiny_corpus, "p", rounds=2, eval_every=1)
    piggy.run()
    records = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    eval1 = next(r for r in records if r["kind"] == "eval" and r["round"] == 1)
    # The same round-1 weights, evaluated by a message of their own.
    separate = run(tmp_path, tiny_corpus, "s", rounds=2, eval_every=1)
    separate.train_round(1)
    direct = separate.evaluate(1, final=False)
    assert eval1["bpb"] == direct["bpb"] and eval1["nodes"] == direct["nodes"] == 2
    # Downloads: two train messages and the final evaluation, nothing for round 1's.
    per_message = piggy.totals.bytes_down // 3
    assert piggy.totals.bytes_down == 3 * per_message
    assert separate.totals.bytes_down == 2 * per_message  # one train + one evaluation


def test_early_rounds_are_shorter_and_the_schedule_adds_up(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    runner = run(tmp_path, tiny_corpus, "e", rounds=3, inner_steps=4, early_rounds=2,
                 early_inner_steps=2)  # fmt: skip
    cfg = runner.cfg
    assert [cfg.steps_in_round(r) for r in (1, 2, 3)] == [2, 2, 4]
    assert [cfg.step_offset(r) for r in (1, 2, 3, 4)] == [0, 2, 4, 8]
    assert cfg.total_inner_steps == 8
    c3 = runner.round_config(3)
    assert (c3.inner_steps, c3.step_offset, c3.total_steps) == (4, 4, 8)
    summary = runner.run()
    assert summary["tokens"] == 2 * 8 * 2 * 32  # nodes x steps x batch x seq
    with pytest.raises(StepError, match="early_inner_steps"):
        run(tmp_path, tiny_corpus, "bad", early_rounds=1)


def test_a_node_evaluates_one_set_of_weights_per_round(tiny_corpus: Path, tmp_path: Path) -> None:
    """A coordinator that asks again for the same round gets the kept result; with other
    weights (probing the held-out text) it is refused."""
    runner = run(tmp_path, tiny_corpus, "probe", rounds=1)
    summary = runner.run()
    again = runner.evaluate(1, final=True)  # the same weights: the kept answer, nothing new
    assert again["nodes"] == 2 and again["bpb"] == summary["bpb"]
    runner.weights = {k: torch.randn_like(v) for k, v in runner.weights.items()}
    probe = runner.evaluate(1, final=True)
    assert probe["nodes"] == 0 and probe["bpb"] == {}
    kept = json.loads((tmp_path / "probe" / "nodes" / "hellas" / "evaluations.json").read_text())
    (rounds,) = kept["runs"].values()
    assert list(rounds) == ["1"] and len(rounds["1"]["weights"]) == 16


def test_a_crash_between_the_commit_and_the_log_loses_no_record(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Killed after round 2's checkpoint but before its records reached metrics.jsonl: the
    resumed run writes them from the checkpoint's history, so every round is logged once."""
    part = run(tmp_path, tiny_corpus, "gap", rounds=3)
    for r in (1, 2):
        record = part.train_round(r)
        part.round = r
        part.history.append(record)
        part._save()
        if r == 1:
            part.folder.log(record)  # round 2's record never made it to the file
    resumed = run(tmp_path, tiny_corpus, "gap", resume=True, rounds=3)
    resumed.run()
    lines = (tmp_path / "gap" / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(x)["round"] for x in lines if json.loads(x)["kind"] == "round"]
    assert rounds == [1, 2, 3]
