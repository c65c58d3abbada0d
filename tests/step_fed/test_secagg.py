"""Secure aggregation's protocol (step_fed/secagg), its four stages run in memory between 8 nodes
and the coordinator: the unmasked sum is exact with nodes dropping at every stage, too many
drops abandon the round whole, swapped and replayed keys are caught, a masked input looks
uniform, and a retried round shares no mask with the attempt before."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from step_fed.identity import NodeSigner, write_new_key
from step_fed.secagg.client import SecAggClient
from step_fed.secagg.grid import Grid, clip, dequantise_sum, quantise
from step_fed.secagg.keys import Advert, RoundKeys, pair_seed
from step_fed.secagg.roster import signed_roster, verified_roster
from step_fed.secagg.server import SecAggServer
from step_fed.secagg.setup import RoundSetup, SecAggAbandoned, SecAggError
from step_fed.secagg.shamir import combine, split
from step_fed.secagg.vector import Layout, contribution, mean_update, node_levels
from step_fed.secagg.wire import advert_of, advert_record, pack, reveal_of, reveal_record, unpack

NAMES = tuple(f"inst-{i}" for i in range(8))
GRID = Grid(clip=1.0, range=0.05, bits=5)  # b = 5 + 3 = 8 bits for 8 nodes


@pytest.fixture(scope="module")
def people(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, NodeSigner], dict[str, str]]:
    """Each node's identity key (as `step-node init` makes it) and the enrolled public lines."""
    folder = tmp_path_factory.mktemp("keys")
    signers = {name: write_new_key(folder / f"{name}.key") for name in (*NAMES, "mallory")}
    return signers, {n: s.public_line for n, s in signers.items() if n != "mallory"}


def _setup(
    round_id: str, names: tuple[str, ...] = NAMES, length: int = 3000, degree: int = 6
) -> RoundSetup:
    """k = 6 neighbours each (of 7 others), 4 shares rebuild a secret, at least 4 inputs in a
    sum: two nodes may drop at any stage and every secret still has 4 holders."""
    threshold = (min(degree, len(names) - 1) + 1) // 2 + 1
    return RoundSetup(round_id, names, degree=degree, threshold=threshold, min_survivors=4,
                      grid=GRID, length=length)  # fmt: skip


def _levels(setup: RoundSetup, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    top = 1 << setup.grid.bits
    return {n: rng.integers(0, top, setup.length, dtype=np.uint32) for n in setup.nodes}


Tamper = Callable[[dict[str, dict[str, Advert]]], None]


def _round(
    setup: RoundSetup,
    people: tuple[dict[str, NodeSigner], dict[str, str]],
    levels: dict[str, np.ndarray],
    drop: dict[int, set[str]] | None = None,
    tamper: Tamper | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The four stages; ``drop[s]``: nodes that vanish before answering stage s; ``tamper``
    edits the adverts the coordinator relays. (sum of levels, survivors)."""
    drop = drop or {}
    signers, identities = people
    server = SecAggServer(setup)
    clients = {n: SecAggClient(n, setup, signers[n], identities) for n in setup.nodes}
    adverts = {n: c.advertise() for n, c in clients.items() if n not in drop.get(1, set())}
    relayed = server.route_adverts(adverts)
    if tamper is not None:
        tamper(relayed)
    sent = {n: clients[n].share_keys(relayed[n]) for n in relayed if n not in drop.get(2, set())}
    boxes = server.route_shares(sent)
    masked = {n: clients[n].masked_input(levels[n], boxes[n])
              for n in boxes if n not in drop.get(3, set())}  # fmt: skip
    survivors, dropped = server.add_masked(masked)
    revealed = {n: clients[n].unmask(survivors, dropped)
                for n in survivors if n not in drop.get(4, set())}  # fmt: skip
    return server.unmask(revealed), survivors


def _plain(levels: dict[str, np.ndarray], who: list[str], bits: int) -> np.ndarray:
    total = sum((levels[n].astype(np.int64) for n in who), np.zeros_like(levels[who[0]], np.int64))
    return (total % (1 << bits)).astype(np.uint32)


@pytest.mark.parametrize("stage", [None, 1, 2, 3, 4])
def test_the_sum_is_exact_with_two_nodes_dropping_at_each_stage(
    people: tuple, stage: int | None
) -> None:
    setup = _setup(f"r7-stage{stage}")
    levels = _levels(setup, 1)
    gone = {NAMES[0], setup.graph[NAMES[0]][0]}  # two neighbours of each other
    total, survivors = _round(setup, people, levels, {stage: gone} if stage else None)
    expected = [n for n in NAMES if stage in (None, 4) or n not in gone]
    assert survivors == sorted(expected)
    assert np.array_equal(total, _plain(levels, expected, setup.bits))
    assert int(total.max()) >= 1 << setup.grid.bits  # a sum, wider than one node's levels


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 8), length=st.integers(1, 2000))
def test_random_inputs_unmask_to_the_plain_sum(
    people: tuple, seed: int, n: int, length: int
) -> None:
    setup = _setup(f"h{seed}-{n}", NAMES[:n], length)
    levels = _levels(setup, seed)
    total, survivors = _round(setup, people, levels)
    assert np.array_equal(total, _plain(levels, survivors, setup.bits))


def test_too_many_drops_abandon_the_round_whole_then_it_succeeds_without_them(
    people: tuple,
) -> None:
    setup = _setup("r8-a")
    levels = _levels(setup, 2)
    victim = NAMES[3]
    # 4 of its 6 neighbours reveal nothing: 2 of them and its own share, 3 < 4 shares
    silent = set(setup.graph[victim][:4])
    with pytest.raises(SecAggAbandoned, match="abandoned"):
        _round(setup, people, levels, {4: silent})
    # too few masked inputs is abandoned before anything is asked of the nodes
    with pytest.raises(SecAggAbandoned, match="min_survivors"):
        _round(_setup("r8-b"), people, levels, {3: set(NAMES[:5])})
    # retried with the nodes that remain: a new round id, new keys, the sum exact
    remaining = tuple(n for n in NAMES if n not in silent)
    again = _setup("r8-c", remaining)
    total, survivors = _round(again, people, levels)
    assert survivors == sorted(remaining)
    assert np.array_equal(total, _plain(levels, survivors, again.bits))


def test_a_swapped_key_is_caught_and_nothing_is_shared(people: tuple) -> None:
    setup = _setup("r9")
    levels = _levels(setup, 3)
    target = NAMES[2]
    mallory = RoundKeys().advert("r9", target, people[0]["mallory"])  # signed by another key

    def swap(relayed: dict[str, dict[str, Advert]]) -> None:
        for adverts in relayed.values():
            if target in adverts:
                adverts[target] = mallory

    with pytest.raises(SecAggError, match=f"not signed by {target}'s enrolled key"):
        _round(setup, people, levels, tamper=swap)

    def keep_signature(relayed: dict[str, dict[str, Advert]]) -> None:
        for adverts in relayed.values():
            if target in adverts:
                real = adverts[target]
                adverts[target] = Advert(real.round_id, real.node, real.channel_key,
                                         mallory.mask_key, real.signature)  # fmt: skip

    with pytest.raises(SecAggError, match="swapped or replayed"):
        _round(setup, people, levels, tamper=keep_signature)


def test_a_replayed_advert_or_share_from_the_round_before_is_rejected(people: tuple) -> None:
    signers, identities = people
    # five nodes, each the neighbour of every other: the same pairs in both rounds
    before, now = (_setup(r, NAMES[:5], degree=4) for r in ("r10", "r11"))
    a, b = NAMES[1], before.graph[NAMES[1]][0]

    def client(name: str, setup: RoundSetup) -> SecAggClient:
        return SecAggClient(name, setup, signers[name], identities)

    def adverts(setup: RoundSetup, of: str, given: dict[str, Advert]) -> dict[str, Advert]:
        """Fresh adverts of ``of``'s neighbours in ``setup``, those in ``given`` instead."""
        fresh = {m: client(m, setup).advertise() for m in setup.graph[of] if m not in given}
        return {**fresh, **given}

    old_b = client(b, before)
    with pytest.raises(SecAggError, match="swapped or replayed"):
        client(a, now).share_keys(adverts(now, a, {b: old_b.advertise()}))
    # shares sealed for round r10 do not open in r11, even between the same two key pairs
    old_a = client(a, before)
    boxes = old_a.share_keys(adverts(before, a, {b: old_b.advertise()}))
    old_b.share_keys(adverts(before, b, {a: old_a.advertise()}))
    old_b.setup = now  # b's keys, asked in the next round
    with pytest.raises(SecAggError, match="do not open for round r11"):
        old_b.masked_input(np.zeros(now.length, np.uint32), {a: boxes[b]})


def test_a_masked_input_is_uniform_and_a_retried_round_reuses_no_mask(people: tuple) -> None:
    signers, identities = people
    setup = _setup("r12", length=200_000)
    zeros = {n: np.zeros(setup.length, np.uint32) for n in NAMES}  # the least random input
    server = SecAggServer(setup)
    clients = {n: SecAggClient(n, setup, signers[n], identities) for n in NAMES}
    relayed = server.route_adverts({n: c.advertise() for n, c in clients.items()})
    boxes = server.route_shares({n: clients[n].share_keys(relayed[n]) for n in NAMES})
    masked = clients[NAMES[0]].masked_input(zeros[NAMES[0]], boxes[NAMES[0]])
    counts = np.bincount(masked, minlength=1 << setup.bits)  # b = 8: one byte per value
    expected = setup.length / len(counts)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert chi2.sf(stat, len(counts) - 1) > 1e-4, stat
    skewed = np.bincount(_levels(setup, 4)[NAMES[0]], minlength=len(counts))  # unmasked levels
    assert chi2.sf(float(((skewed - expected) ** 2 / expected).sum()), len(counts) - 1) < 1e-10
    # the round retried (coordinator crashed mid-protocol): a new round id, new keys and seeds
    retry = _setup("r12-retry", length=setup.length)
    second = SecAggClient(NAMES[0], retry, signers[NAMES[0]], identities)
    assert second.self_seed != clients[NAMES[0]].self_seed
    assert second.keys.mask_secret() != clients[NAMES[0]].keys.mask_secret()
    other = RoundKeys()
    public = other.advert("x", "y", signers["mallory"]).mask_key
    assert pair_seed(other.mask_secret(), public, "r12", "a", "b") != pair_seed(
        other.mask_secret(), public, "r12-retry", "a", "b")  # fmt: skip


def test_a_node_refuses_to_reveal_both_secrets_or_to_unmask_too_small_a_sum(people: tuple) -> None:
    setup = _setup("r13")
    signers, identities = people
    server = SecAggServer(setup)
    clients = {n: SecAggClient(n, setup, signers[n], identities) for n in NAMES}
    relayed = server.route_adverts({n: c.advertise() for n, c in clients.items()})
    boxes = server.route_shares({n: clients[n].share_keys(relayed[n]) for n in NAMES})
    me = clients[NAMES[0]]
    me.masked_input(np.zeros(setup.length, np.uint32), boxes[NAMES[0]])
    friend = me.neighbours[0]
    with pytest.raises(SecAggError, match="reveal both secrets"):
        me.unmask(list(NAMES), [friend])
    with pytest.raises(SecAggError, match="fewer than min_survivors"):
        me.unmask([NAMES[0], friend, NAMES[5]], [])


def test_the_grid_rounds_without_bias_and_clips() -> None:
    grid = Grid(clip=1.0, range=0.02, bits=8)
    rng = np.random.default_rng(0)
    updates = [clip(rng.normal(0, 0.01, 50_000).astype(np.float32), grid.clip) for _ in range(4)]
    assert all(float(np.linalg.norm(u)) <= 1.0 + 1e-5 for u in updates)
    levels = sum(quantise(u, grid, rng).astype(np.uint64) for u in updates)
    got = dequantise_sum(np.asarray(levels), 4, grid)
    want = sum(np.clip(u, -grid.range, grid.range) for u in updates)
    err = got - want
    assert abs(float(err.mean())) < 1e-5  # unbiased
    assert float(np.abs(err).max()) <= 4 * grid.step  # at most one step per node


def test_shamir_rebuilds_from_any_threshold_and_not_from_fewer() -> None:
    secret = bytes(range(32))
    shares = split(secret, [1, 2, 3, 4, 5], 3)
    assert (
        combine(shares[2:], 3) == secret and combine([shares[0], shares[4], shares[1]], 3) == secret
    )
    with pytest.raises(ValueError, match="3 needed"):
        combine(shares[:2], 3)
    noise = 1 << 400  # a share corrupted at random rebuilds no 32-byte value (but for 2^-265)
    wrong = [shares[0], shares[1], type(shares[2])(shares[2].x, shares[2].y ^ noise)]
    with pytest.raises(ValueError, match="do not belong to one secret"):
        combine(wrong, 3)


def test_messages_survive_the_wire_and_malformed_ones_are_refused(people: tuple) -> None:
    setup = _setup("r14")
    signers, identities = people
    advert = SecAggClient(NAMES[0], setup, signers[NAMES[0]], identities).advertise()
    assert advert_of(advert_record(advert), "test") == advert
    with pytest.raises(SecAggError, match="malformed key advert"):
        advert_of({**advert_record(advert), "mask_key": b"short"}, "inst-0's reply")
    revealed = {"inst-1": ("seed", b"\x00\x01" * 34), "inst-2": ("mask", b"\x02" * 68)}
    assert reveal_of(reveal_record(revealed), "test") == revealed
    with pytest.raises(SecAggError, match="malformed share"):
        reveal_of({"both:inst-1": b"x"}, "inst-0's reply")
    masked = np.random.default_rng(0).integers(0, 1 << setup.bits, 100, dtype=np.uint32)
    packed = pack(masked, setup.bits)
    assert packed.dtype == np.uint8 and np.array_equal(unpack(packed, setup.bits, 100, "t"), masked)
    with pytest.raises(SecAggError, match="expects uint8"):
        unpack(masked, setup.bits, 100, "inst-0's reply")
    with pytest.raises(SecAggError, match="more than 7 bits"):
        unpack(np.full(100, 200, np.uint8), 7, 100, "inst-0's reply")


def test_the_roster_of_identity_keys_verifies_and_refuses_alteration_or_rollback(
    people: tuple,
) -> None:
    federation = ed25519.Ed25519PrivateKey.generate()
    identities = people[1]
    doc = signed_roster(federation, 3, identities)
    assert verified_roster(doc, federation.public_key(), seen_version=3) == identities
    swapped = {**doc, "nodes": {**doc["nodes"], NAMES[2]: people[0]["mallory"].public_line}}
    with pytest.raises(SecAggError, match="not signed by the federation key"):
        verified_roster(swapped, federation.public_key())
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(SecAggError, match="not signed by the federation key"):
        verified_roster(signed_roster(other, 4, identities), federation.public_key())
    with pytest.raises(SecAggError, match="older than version 4"):
        verified_roster(doc, federation.public_key(), seen_version=4)
    with pytest.raises(SecAggError, match="malformed"):
        verified_roster({"version": 1, "nodes": {"a": 1}, "signature": ""}, federation.public_key())


@pytest.mark.parametrize("cap", [1, 8])
def test_the_token_weighted_mean_and_token_rows_come_back_from_the_secure_sum(
    people: tuple, cap: int
) -> None:
    import torch

    shapes = {"b": torch.Size([7]), "a.weight": torch.Size([40, 25]), "emb": torch.Size([6, 5])}
    nominal, grid = 4 * 64 * 16, Grid(clip=10.0, range=0.01, bits=8)
    layout = Layout(shapes, nominal, grid.bits, rows=("emb",), row_cap=cap)
    gen = torch.Generator().manual_seed(0)
    updates = {n: {k: torch.randn(s, generator=gen) * 1e-3 for k, s in shapes.items()}
               for n in NAMES}  # fmt: skip
    weights = {n: nominal - 97 * i for i, n in enumerate(NAMES)}
    counts = {n: torch.tensor([0, 0, 5 * i, 900, 1, i % 2], dtype=torch.int32)
              for i, n in enumerate(NAMES)}  # fmt: skip
    rng = np.random.default_rng(1)
    levels, errors = {}, {}
    for n in NAMES:
        scaled = contribution(updates[n], weights[n], counts[n], layout)
        levels[n], errors[n] = node_levels(scaled, weights[n], counts[n], layout, grid, rng)
        assert float(np.abs(errors[n]).max()) <= grid.step  # what rounding left, to carry on
    setup = RoundSetup("r15", NAMES, degree=6, threshold=4, min_survivors=4, grid=grid,
                       length=layout.length)  # fmt: skip
    total, survivors = _round(setup, people, levels, {3: {NAMES[5]}})
    mean, tokens = mean_update(total, len(survivors), layout, grid)
    assert tokens == sum(weights[n] for n in survivors)  # exact
    for k in ("b", "a.weight"):
        want = sum(updates[n][k] * weights[n] for n in survivors) / tokens
        err = float((mean[k] - want).abs().max())
        assert err <= len(survivors) * grid.step * nominal / tokens, (k, err)  # a step per node
        assert float((want).abs().max()) > 20 * err  # and far smaller than the values
    # each node's row weighs min(count, cap): presence when cap is 1
    saw = {n: counts[n].clamp(max=cap).to(torch.float32)[:, None] for n in survivors}
    weight = sum(saw.values())
    rows = sum(updates[n]["emb"] * saw[n] for n in survivors) / weight.clamp_min(1)
    assert torch.equal(mean["emb"][:2], torch.zeros(2, 5))  # nobody saw tokens 0, 1: unchanged
    err = (mean["emb"] - rows).abs()
    # a row's error: at most cap steps per node that saw it, over the weight of those nodes
    bound = cap * grid.step * (weight > 0).sum() / weight.clamp_min(1)  # (6, 1)
    assert bool((err <= bound * 1.0001).all()), float((err / bound).max())
    assert float(rows[3].abs().max()) > 10 * float(err[3].max())  # a common token: close
    if cap > 1:  # token 3 (900 each) weighs 8 per node, token 4 (1 each) 1: not presence
        assert not torch.allclose(rows, sum(updates[n]["emb"] * (counts[n] > 0)[:, None]
                                            for n in survivors) / (weight > 0).sum())  # fmt: skip
