"""Characters per token per language, byte-level vs byte-level BPE, on the parallel UDHR text.

The UDHR split holds the same declaration in every language, so tokens per language compare
directly: a fair tokenizer does not make Greek or Bulgarian several times longer than English.
The BPE is trained like `step-model tokenizer train` (language-balanced sample of train/).

    python bench/tokenizer_fairness.py [--vocab-size 4096] [--corpus DIR] [--bpe FILE]

Prints a markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

from step_model.corpus import LanguageSelection, read_step_corpus, resolve_corpus
from step_model.stats import language_stats
from step_model.tokenizer import ByteTokenizer, balanced_sample, load_tokenizer, train_bpe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--bpe", default=None, help="an existing tokenizer.json instead of training")
    ap.add_argument("--sample-chars", type=int, default=500_000)
    args = ap.parse_args()
    root = resolve_corpus(args.corpus)
    if args.bpe:
        bpe = load_tokenizer(args.bpe)
    else:
        train = read_step_corpus(root, "train", LanguageSelection(None, strict=False))
        bpe = train_bpe(balanced_sample(train, args.sample_chars), args.vocab_size)
    udhr = read_step_corpus(root, "udhr", LanguageSelection(None, strict=False))
    byte_stats, bpe_stats = language_stats(udhr, ByteTokenizer()), language_stats(udhr, bpe)
    en_tokens = bpe_stats["en"].tokens
    rows = {
        lang: {
            "byte": round(byte_stats[lang].chars_per_token, 3),
            "bpe": round(bpe_stats[lang].chars_per_token, 3),
            "bpe_tokens_vs_en": round(bpe_stats[lang].tokens / en_tokens, 3),
        }
        for lang in sorted(udhr)
    }
    print(f"| lang | chars/token byte | chars/token BPE-{bpe.vocab_size} | BPE tokens vs en |")
    print("|---|---|---|---|")
    for lang, r in rows.items():
        print(f"| {lang} | {r['byte']:.2f} | {r['bpe']:.2f} | {r['bpe_tokens_vs_en']:.2f} |")
    worst = max(rows, key=lambda lang: rows[lang]["bpe_tokens_vs_en"])
    print(
        json.dumps(
            {
                "bench": "tokenizer_fairness",
                "vocab_size": bpe.vocab_size,
                "split": "udhr",
                "languages": rows,
                "max_tokens_vs_en": [worst, rows[worst]["bpe_tokens_vs_en"]],
            }
        )
    )


if __name__ == "__main__":
    main()
