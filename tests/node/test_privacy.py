"""Local DP: the accountant against Opacus' reference values, the ledger's hard budget (also
across restarts), per-sample clipping against a hand-written loop, and bad input."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.dp_trainer import DPSettings, Records, dp_steps
from node.keys import create_key_pair
from node.ledger import PrivacyBudgetExhausted, PrivacyLedger, epsilon_of
from node.privacy_config import PrivacyConfig, privacy_from_dict
from step_common.errors import StepError
from step_fed.identity import NodeSigner
from step_fed.secret_rng import secret_generator
from step_model.config import preset
from step_model.model import Transformer


def test_rdp_reproduces_opacus_reference_value() -> None:
    # Opacus tests/accountants_test.py: sigma 1.5, q 0.04, 90 epochs (2250 steps), delta 1e-5.
    assert epsilon_of([(1.5, 0.04, 2250)], 1e-5, "rdp") == pytest.approx(7.32911117143, abs=1e-9)
    # Composition: the same steps entered as rounds give the same epsilon.
    rounds = [(1.5, 0.04, 250)] * 9
    assert epsilon_of(rounds, 1e-5, "rdp") == pytest.approx(7.32911117143, abs=1e-9)


def test_prv_matches_reference_values_within_its_error_bound() -> None:
    # Opacus' PRV test value (delta 1e-5), and Microsoft's prv_accountant values at delta 1e-6
    # (Opacus tests/prv_accountant.py); PRV's error bound is eps_error = 0.01.
    assert epsilon_of([(1.5, 0.04, 2250)], 1e-5, "prv") == pytest.approx(6.7774, abs=0.01)
    assert epsilon_of([(0.8, 0.05, 100)], 1e-6, "prv") == pytest.approx(6.74105, abs=0.01)
    assert epsilon_of([(1.5, 0.05, 1000)], 1e-6, "prv") == pytest.approx(6.20997, abs=0.01)


def cfg(**kw: object) -> PrivacyConfig:
    base: dict[str, object] = {"epsilon": 4.0, "delta": 1e-6, "rounds": 5}
    parsed = privacy_from_dict({**base, **kw}, "test")
    assert parsed is not None
    return parsed


def test_derived_noise_spends_the_budget_over_the_planned_rounds(tmp_path: Path) -> None:
    c = cfg(epsilon=3.0, rounds=5)
    for r in range(1, 6):
        ledger = PrivacyLedger.load(tmp_path, "n")  # a restart before every round
        entry = ledger.plan(c, r, expected_batch=8, steps=20, records=4000)
        ledger.record(entry, "seq")
    ledger = PrivacyLedger.load(tmp_path, "n")
    assert 0.99 * 3.0 <= ledger.spent(c) <= 3.0
    sigmas = [e.noise_multiplier for e in ledger.entries]
    assert max(sigmas) / min(sigmas) < 1.01  # an even spread over the plan
    with pytest.raises(PrivacyBudgetExhausted, match="planned"):
        ledger.plan(c, 6, expected_batch=8, steps=20, records=4000)


Round = tuple[int, int, int]
"""(expected batch, steps, training sequences) of one round a node is asked to train."""
ROUNDS = st.lists(
    st.tuples(st.integers(4, 32), st.integers(1, 60), st.integers(2000, 20000)),
    min_size=1,
    max_size=8,
)


@st.composite
def budgets(draw: st.DrawFn) -> PrivacyConfig:
    """A budget spent with a fixed sigma or over planned rounds, on either accountant (PRV,
    slow to compose, only with a fixed sigma)."""
    epsilon = draw(st.floats(0.5, 8.0))
    accountant = draw(st.sampled_from(["rdp", "rdp", "rdp", "prv"]))
    if accountant == "prv" or draw(st.booleans()):
        c = cfg(epsilon=epsilon, noise_multiplier=draw(st.floats(0.6, 3.0)), rounds=None)
    else:
        c = cfg(epsilon=epsilon, rounds=draw(st.integers(1, 6)))
    return PrivacyConfig(**{**c.__dict__, "accountant": accountant})


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(c=budgets(), rounds=ROUNDS)
def test_ledger_never_exceeds_the_budget_across_restarts(
    tmp_path_factory: pytest.TempPathFactory, c: PrivacyConfig, rounds: list[Round]
) -> None:
    """Whatever the budget and the rounds asked, with a restart before each: spent never
    exceeds the budget, never decreases, and a refusal changes nothing but the refusals."""
    folder = tmp_path_factory.mktemp("ledger")
    spent_before, refused = 0.0, 0
    for r, (batch, steps, records) in enumerate(rounds, start=1):
        ledger = PrivacyLedger.load(folder, "n")
        try:
            entry = ledger.plan(c, r, batch, steps, records)
        except PrivacyBudgetExhausted as e:
            ledger.refuse(r, str(e))
            refused += 1
        except StepError:  # one round alone would exceed: nothing may be recorded
            assert not ledger.entries
            break
        else:
            ledger.record(entry, "seq")
        reloaded = PrivacyLedger.load(folder, "n")
        spent = reloaded.spent(c)
        assert spent <= c.epsilon + 1e-9, (r, spent, c.epsilon)
        # PRV is a numerical estimate (error bound 0.01): monotone only to that precision.
        assert spent >= spent_before - (0.01 if c.accountant == "prv" else 1e-9)
        spent_before = spent
        assert len(reloaded.refusals) == refused


def test_bad_budgets_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    ledger = PrivacyLedger.load(tmp_path, "n")
    tiny = cfg(epsilon=0.01, noise_multiplier=0.8, rounds=None)
    with pytest.raises(StepError, match="cannot be met by even one round"):
        ledger.plan(tiny, 1, expected_batch=8, steps=50, records=1000)
    with pytest.raises(StepError, match="must be below 1 / N"):
        ledger.plan(cfg(delta=1e-3), 1, expected_batch=8, steps=5, records=1000)
    with pytest.raises(StepError, match="larger than"):
        ledger.plan(cfg(), 1, expected_batch=8, steps=5, records=4)
    assert not (tmp_path / "privacy").exists()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"epsilon": 8.0, "rounds": 3}, "privacy.delta is missing"),
        ({"delta": 1e-6, "rounds": 3}, "privacy.epsilon is missing"),
        ({"epsilon": -1.0, "delta": 1e-6, "rounds": 3}, "privacy.epsilon"),
        ({"epsilon": 8.0, "delta": 1.5, "rounds": 3}, "privacy.delta"),
        ({"epsilon": 8.0, "delta": 1e-6}, "exactly one of"),
        ({"epsilon": 8.0, "delta": 1e-6, "rounds": 3, "noise_multiplier": 1.0}, "exactly one of"),
        ({"epsilon": 8.0, "delta": 1e-6, "rounds": 0}, "privacy.rounds"),
        ({"epsilon": 8.0, "delta": 1e-6, "rounds": 3, "accountant": "gdp"}, "'rdp' or 'prv'"),
        ({"epsilon": 8.0, "delta": 1e-6, "rounds": 3, "mode": "fast"}, "'ghost' or 'hooks'"),
        ({"epsilon": 8.0, "delta": 1e-6, "rounds": 3, "budget": 1}, "unknown key privacy.budget"),
    ],
)
def test_bad_privacy_settings_name_the_key(data: dict[str, object], needle: str) -> None:
    with pytest.raises(StepError, match=needle.replace(".", r"\.")):
        privacy_from_dict(data, "node.yaml")


def _ledger_with_one_round(folder: Path) -> Path:
    ledger = PrivacyLedger.load(folder, "n")
    ledger.record(ledger.plan(cfg(), 1, 8, 10, 5000), "seq")
    return ledger.path


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda t: t.replace('"steps": 10', '"steps": 1'), "SHA-256 mismatch"),
        (lambda t: t[: len(t) // 2], "unreadable"),
        (lambda t: t.replace('"node": "n"', '"node": "m"'), "SHA-256 mismatch"),
    ],
    ids=["hand-edited", "truncated", "renamed"],
)
def test_a_damaged_ledger_is_refused_and_left_alone(tmp_path: Path, damage, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = _ledger_with_one_round(tmp_path)
    path.write_text(damage(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(StepError, match=needle):
        PrivacyLedger.load(tmp_path, "n")
    assert path.read_bytes() == before


def _reseal(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the ledger as someone without the node's key would: recompute its SHA-256."""
    doc = json.loads(path.read_text())
    for k in ("sha256", "signature", "signed_by"):
        doc.pop(k, None)
    edit(doc)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_text(json.dumps({**doc, "sha256": hashlib.sha256(body).hexdigest()}))


def test_a_resealed_ledger_fails_the_node_keys_signature(tmp_path: Path) -> None:
    """steps 10 -> 1 with the SHA-256 recomputed would lower the epsilon spent: a deployed node
    (its key signs the ledger) refuses it; so it does a ledger stripped of its signature."""
    create_key_pair(tmp_path, "n")
    signer = NodeSigner(tmp_path / "node.key")
    ledger = PrivacyLedger.load(tmp_path, "n", signer)
    ledger.record(ledger.plan(cfg(), 1, 8, 10, 5000), "seq")
    assert PrivacyLedger.load(tmp_path, "n", signer).entries == ledger.entries
    _reseal(ledger.path, lambda d: d["entries"][0].update(steps=1))
    with pytest.raises(StepError, match="not signed by this node's key"):
        PrivacyLedger.load(tmp_path, "n", signer)
    ledger.save()
    _reseal(ledger.path, lambda d: None)  # the same content, the signature dropped
    with pytest.raises(StepError, match="not signed by this node's key"):
        PrivacyLedger.load(tmp_path, "n", signer)


# --- per-sample clipping ----------------------------------------------------------------------


def _hand_clipped_mean(model: Transformer, y: torch.Tensor, bos: int, clip: float) -> dict:  # type: ignore[type-arg]
    """Per sequence: the gradient of its mean token loss, clipped to L2 norm ``clip``; then the
    sum over sequences divided by the batch (DP-SGD with noise 0)."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    device = next(model.parameters()).device
    for row in y.to(device):
        model.zero_grad(set_to_none=True)
        x = torch.cat([torch.tensor([bos], device=device), row[:-1]])[None]
        logits = model(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), row).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for n, g in grads.items():
            total[n] += g * factor
    return {n: t / len(y) for n, t in total.items()}


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_per_sample_clipping_matches_a_hand_written_loop(mode: str, device: str) -> None:
    torch.manual_seed(0)
    config = preset("debug").with_vocab(64)
    model = Transformer(config).double()
    y = torch.randint(1, 64, (6, 16))
    clip = 0.5  # below most per-sequence norms at init, so clipping is exercised
    reference = _hand_clipped_mean(model, y, 0, clip)  # on the CPU
    model.to(device)
    reference = {n: t.to(device) for n, t in reference.items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # q = 1 (expected batch = all records), noise 0, SGD lr 1: the step is -(clipped mean).
    records = Records(y, {"xx": len(y)})
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, expected_batch=len(y), mode=mode)
    dp_steps(model, optimizer, records, dp, [1.0], 0, secret_generator(0))
    diff = torch.cat([(before[n] - p.detach() - reference[n]).flatten()
                      for n, p in model.named_parameters()])  # fmt: skip
    ref = torch.cat([t.flatten() for t in reference.values()])
    assert float(diff.norm() / ref.norm()) < 1e-5
    assert not hasattr(model, "_forward_counter")  # Opacus unhooked the model afterwards


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bf16_per_sample_gradients_are_still_clipped_within_c(device: str) -> None:
    from node.dp_trainer import DPSGD

    torch.manual_seed(0)
    model = Transformer(preset("debug").with_vocab(64)).to(device)
    y = torch.randint(1, 64, (1, 16))
    clip = 0.05  # far below the gradient's norm: the step is exactly C long if clipped right
    exact = _hand_clipped_mean(model, y, 0, clip)  # fp32, on the device's copy of the model
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    # one sequence, q = 1, noise 0, SGD lr 1: the step is that sequence's clipped gradient
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, expected_batch=1, mode="hooks")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    sgd = DPSGD(model, optimizer, Records(y, {"xx": 1}), dp, 0, secret_generator(0), bf16=True)
    sgd.step(1.0)
    sgd.close()
    step = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    assert clip * 0.999 <= float(step.norm()) <= clip * (1 + 1e-5)
    reference = torch.cat([t.flatten() for t in exact.values()])
    assert float(F.cosine_similarity(step, reference, dim=0)) > 0.99  # bf16 gradients


def test_records_are_fixed_non_overlapping_sequences() -> None:
    import numpy as np

    from node.dp_trainer import make_records
    from step_model.data import TokenStream

    streams = {
        "de": TokenStream("de", np.arange(10, dtype=np.int32), 10),
        "el": TokenStream("el", np.arange(100, 107, dtype=np.int32), 7),
    }
    r = make_records(streams, 3)
    assert r.per_language == {"de": 3, "el": 2}
    assert r.targets.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [100, 101, 102], [103, 104, 105]]


def test_ledger_file_is_json_with_every_mechanism(tmp_path: Path) -> None:
    path = _ledger_with_one_round(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["entries"][0]["steps"] == 10 and doc["entries"][0]["sample_rate"] == 8 / 5000
    assert len(doc["sha256"]) == 64


def test_delta_is_pinned_for_the_life_of_a_ledger(tmp_path: Path) -> None:
    """Raising delta after rounds were trained would lower the epsilon they count for."""
    c = cfg(epsilon=8.0, rounds=4)
    ledger = PrivacyLedger.load(tmp_path, "n")
    ledger.record(ledger.plan(c, 1, expected_batch=8, steps=20, records=4000), "seq")
    spent = ledger.spent(c)
    looser = cfg(epsilon=8.0, rounds=4, delta=1e-4)
    assert ledger.spent(looser) == spent  # reported at the ledger's own delta
    with pytest.raises(StepError, match=r"set privacy\.delta back to 1e-06"):
        ledger.plan(looser, 2, expected_batch=8, steps=20, records=4000)


def test_two_writers_on_one_ledger_lose_no_entry(tmp_path: Path) -> None:
    """A node started twice on one state folder: the second waits for the first's round to be
    recorded, then plans on top of it."""
    c = cfg(epsilon=8.0, rounds=4)

    def one_round(round_: int) -> None:
        with PrivacyLedger.locked(tmp_path):
            ledger = PrivacyLedger.load(tmp_path, "n")
            ledger.record(ledger.plan(c, round_, expected_batch=8, steps=5, records=4000), "seq")

    with PrivacyLedger.locked(tmp_path):
        other = threading.Thread(target=one_round, args=(2,))
        other.start()
        other.join(timeout=0.5)
        assert other.is_alive()  # it waits for the lock
        ledger = PrivacyLedger.load(tmp_path, "n")
        ledger.record(ledger.plan(c, 1, expected_batch=8, steps=5, records=4000), "seq")
    other.join(timeout=60)
    assert [e.round for e in PrivacyLedger.load(tmp_path, "n").entries] == [1, 2]
