"""Does the federated model memorise an institution's secrets? Canary exposure with and
without local DP, side by side in one invocation (Carlini et al. 2019, "The Secret Sharer").

    python bench/canary_exposure.py [--rounds 6] [--inner-steps 50] [--repeats 30] [--out DIR]

Three institutions (el, et, de; the first 150 kB of each language's STEP-35 training text).
The Estonian one has canaries planted in its training text: ``--canaries`` random 6-digit
secrets in the sentence "Salajane kood on NNNNNN." ("the secret code is"), each inserted
``--repeats`` times at random places. The same federation (byte tokenizer, ``debug`` preset,
in-process transport) is trained twice: without DP, and with DP-SGD at the Estonian node
(``--epsilon``, delta 1e-6, noise derived for the planned rounds).

Exposure of a canary = -log2(share of random candidate secrets the final global model finds at
least as likely as the real one), estimated from ``--candidates`` random 6-digit candidates
(so at most log2(candidates + 1) bits; the full space is 10^6, log2 = 19.9 bits). A model that
learned nothing about a secret gives about 1 bit on average; memorised secrets rank first.
Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.rounds import RoundRunner  # noqa: E402
from step_model.config import ModelConfig, preset  # noqa: E402
from step_model.corpus import head_lines, resolve_corpus  # noqa: E402
from step_model.model import Transformer  # noqa: E402
from step_model.tokenizer import ByteTokenizer  # noqa: E402
from step_sim.config import load_sim_config  # noqa: E402
from step_sim.local_transport import LocalTransport  # noqa: E402

PREFIX = "Salajane kood on "
LANGS = ("el", "et", "de")
CANARY_LANG = "et"


def build_corpus(src: Path, dst: Path, secrets: list[str], repeats: int, seed: int) -> None:
    """A small STEP-35-layout corpus with the canaries planted in et's training text only."""
    rng = random.Random(seed)
    for split, size in (("train", 150_000), ("valid", 20_000)):
        (dst / split).mkdir(parents=True, exist_ok=True)
        for lang in LANGS:
            text = (src / split / f"{lang}.txt").read_text("utf-8")
            lines = head_lines(text, size).splitlines(keepends=True)
            if split == "train" and lang == CANARY_LANG:
                for secret in secrets:
                    for _ in range(repeats):
                        lines.insert(rng.randrange(len(lines) + 1), f"{PREFIX}{secret}.\n")
            (dst / split / f"{lang}.txt").write_text("".join(lines), "utf-8")
    (dst / "MANIFEST.json").write_text('{"name": "canary-bench"}', "utf-8")


def secret_nll(model: Transformer, secrets: list[str], batch: int = 2048) -> torch.Tensor:
    """(len(secrets),) summed NLL in nats of each secret's digits after the prefix."""
    tok = ByteTokenizer()
    prefix = tok.encode(PREFIX).tolist()
    rows = [[tok.bos_id, *prefix, *tok.encode(s + ".").tolist()] for s in secrets]
    ids = torch.tensor(rows)  # (N, 1 + P + 7)
    start = 1 + len(prefix)  # position of the first digit
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            x = ids[i : i + batch]
            logits = model(x[:, :-1])  # (b, L-1, V): position t predicts token t + 1
            logp = F.log_softmax(logits.float(), dim=-1)
            target = x[:, 1:]
            nll = -logp.gather(-1, target[..., None])[..., 0]  # (b, L-1)
            out.append(nll[:, start - 1 : start - 1 + 6].sum(dim=1))
    return torch.cat(out)


def exposure(model: Transformer, secret: str, candidates: list[str]) -> float:
    nll = secret_nll(model, [secret, *candidates])
    at_least_as_likely = int((nll[1:] <= nll[0]).sum())
    return -math.log2((at_least_as_likely + 1) / (len(candidates) + 1))


def run(
    name: str, corpus: Path, out: Path, args: argparse.Namespace, privacy: dict[str, Any] | None
) -> Transformer:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    insts: list[dict[str, Any]] = [{"name": f"inst-{lang}", "languages": {lang: 1.0}}
                                   for lang in LANGS]  # fmt: skip
    if privacy:
        insts[LANGS.index(CANARY_LANG)]["privacy"] = privacy
    doc = {
        "corpus": str(corpus),
        "federation": {
            "preset": "debug", "tokenizer": "byte", "rounds": args.rounds,
            "inner_steps": args.inner_steps, "batch_size": 8, "seq_len": 128, "inner_lr": 3e-3,
            "warmup_steps": 20, "eval_every": args.rounds, "eval_max_tokens": 4096,
            "outer_lr": 1.0, "outer_momentum": 0.5, "seed": args.seed,
        },
        "institutions": insts,
    }  # fmt: skip
    cfg_file = run_dir / "sim.yaml"
    cfg_file.write_text(yaml.safe_dump(doc), "utf-8")
    sim = load_sim_config(cfg_file)
    runner = RoundRunner(sim.federation, run_dir, LocalTransport(cfg_file, run_dir, len(insts)))
    summary = runner.run()
    model = Transformer(preset("debug").with_vocab(ByteTokenizer().vocab_size))
    model.load_state_dict(runner.weights)
    model.eval()
    summary["model_config"] = ModelConfig.to_dict(model.config)
    (run_dir / "bench-summary.json").write_text(json.dumps(summary, default=str), "utf-8")
    model.summary = summary  # type: ignore[assignment]
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--inner-steps", type=int, default=50)
    ap.add_argument("--canaries", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=20_000)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/canary-bench"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    secrets = [f"{rng.randrange(10**6):06d}" for _ in range(args.canaries)]
    candidates = [f"{rng.randrange(10**6):06d}" for _ in range(args.candidates)]
    candidates = [c for c in candidates if c not in secrets]
    corpus = args.out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    build_corpus(resolve_corpus(None), corpus, secrets, args.repeats, args.seed)
    privacy = {"epsilon": args.epsilon, "delta": 1e-6, "rounds": args.rounds}
    results = {}
    for name, dp in (("no-dp", None), ("dp", privacy)):
        t0 = time.monotonic()
        model = run(name, corpus, args.out, args, dp)
        exposures = [exposure(model, s, candidates) for s in secrets]
        summary: dict[str, Any] = model.summary  # type: ignore[assignment]
        results[name] = {
            "run": name,
            "local_dp": dp,
            "epsilon_spent": summary.get("epsilon", {}).get(f"inst-{CANARY_LANG}"),
            "mean_exposure_bits": sum(exposures) / len(exposures),
            "max_exposure_bits": max(exposures),
            "exposures": [round(e, 2) for e in exposures],
            "mean_bpb": summary["mean_bpb"],
            "bpb_et": summary["bpb"].get(CANARY_LANG),
            "wall_s": round(time.monotonic() - t0),
        }
        print(json.dumps(results[name]), flush=True)
    print(json.dumps({
        "canaries": args.canaries, "repeats": args.repeats, "candidates": len(candidates),
        "max_measurable_bits": math.log2(len(candidates) + 1),
        "mean_exposure_no_dp": results["no-dp"]["mean_exposure_bits"],
        "mean_exposure_dp": results["dp"]["mean_exposure_bits"],
        "epsilon": results["dp"]["epsilon_spent"],
        "mean_bpb_no_dp": results["no-dp"]["mean_bpb"], "mean_bpb_dp": results["dp"]["mean_bpb"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
