"""``step-model``: inspect presets, train tokenizers, look at corpora, train and evaluate models,
and move them to and from the Hugging Face format."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from step_common.byte_progress import byte_progress
from step_common.cli_common import (
    command_line,
    console_for,
    emit_json,
    table,
    user_errors,
)
from step_common.errors import StepError
from step_common.model_options import options_from
from step_model.config import PRESETS, preset
from step_model.corpus import LanguageSelection, read_corpus, resolve_corpus
from step_model.tokenizer import BPE_SAMPLE_CHARS
from step_model.train_config import TrainConfig

app = command_line(__doc__, "step-model")
tokenizer_app = typer.Typer(help="Train byte-level BPE tokenizers.", no_args_is_help=True)
corpus_app = typer.Typer(
    help="Corpus statistics and rebuilding STEP-35 from its sources.", no_args_is_help=True
)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(corpus_app, name="corpus")

JsonFlag = Annotated[bool, typer.Option("--json", help="Last line of stdout: a JSON summary.")]
LanguagesOpt = Annotated[
    str | None,
    typer.Option(help="Comma-separated language codes, or a group: 'eu' (24 EU languages), 'all'."),
]


@app.command()
@user_errors
def info(
    preset_name: Annotated[str, typer.Option("--preset", help=f"One of: {', '.join(PRESETS)}.")],
    vocab_size: Annotated[
        int | None, typer.Option(help="Override the preset's vocabulary.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Shape and exact parameter count of a model preset."""
    cfg = preset(preset_name)
    if vocab_size is not None:
        cfg = cfg.with_vocab(vocab_size)
    summary: dict[str, Any] = {
        "preset": preset_name,
        "params": cfg.num_params(),
        "non_embedding_params": cfg.num_params() - 2 * cfg.vocab_size * cfg.dim,
        **asdict(cfg),
    }
    console = console_for(json_out)
    rows = [(k, f"{v:,}" if isinstance(v, int) else v) for k, v in summary.items()]
    console.print(table(f"preset {preset_name}", ["field", "value"], rows))
    if json_out:
        emit_json(summary)


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(
    corpus: Annotated[Path, typer.Option(help="Corpus folder (STEP-35 layout or .txt/.jsonl).")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, special tokens included.")],
    out: Annotated[Path, typer.Option(help="Where to write tokenizer.json.")],
    languages: LanguagesOpt = None,
    sample_chars: Annotated[
        int, typer.Option(help="Training characters taken per language.")
    ] = BPE_SAMPLE_CHARS,
    json_out: JsonFlag = False,
) -> None:
    """Train a byte-level BPE on a language-balanced sample of the corpus."""
    from step_model.stats import language_stats
    from step_model.tokenizer import balanced_sample, save_tokenizer, train_bpe

    console = console_for(json_out)
    with console.status("reading the corpus"):
        texts = read_corpus(resolve_corpus(corpus), "train", LanguageSelection.parse(languages))
    console.print(f"training a {vocab_size}-token BPE on {len(texts)} languages")
    tok = train_bpe(balanced_sample(texts, sample_chars), vocab_size, console.is_terminal)
    save_tokenizer(tok, out)
    with console.status("measuring characters per token on each language's text"):
        stats = language_stats(texts, tok)
    cpt = {lang: round(s.chars_per_token, 3) for lang, s in stats.items()}
    console.print(
        table("characters per token (train split)", ["lang", "chars/token"], sorted(cpt.items()))
    )
    console.print(f"wrote {out} ({tok.vocab_size} tokens)")
    if json_out:
        emit_json({"out": str(out), "vocab_size": tok.vocab_size, "chars_per_token": cpt})


@corpus_app.command("stats")
@user_errors
def corpus_stats(
    corpus: Annotated[Path, typer.Argument(help="Corpus folder.")],
    split: Annotated[str, typer.Option(help="train, valid or udhr.")] = "train",
    tokenizer: Annotated[str, typer.Option(help="'byte' or a tokenizer.json.")] = "byte",
    languages: LanguagesOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Bytes, paragraphs and tokens per language."""
    from step_model.stats import language_stats
    from step_model.tokenizer import load_tokenizer

    texts = read_corpus(resolve_corpus(corpus), split, LanguageSelection.parse(languages))
    stats = language_stats(texts, load_tokenizer(tokenizer))
    rows = [
        (lang, f"{s.bytes:,}", f"{s.paragraphs:,}", f"{s.tokens:,}", f"{s.chars_per_token:.2f}")
        for lang, s in sorted(stats.items())
    ]
    total = [sum(getattr(s, f) for s in stats.values()) for f in ("bytes", "paragraphs", "tokens")]
    rows.append(("total", f"{total[0]:,}", f"{total[1]:,}", f"{total[2]:,}", ""))
    console_for(json_out).print(
        table(
            f"{corpus} ({split} split), tokenizer {tokenizer}",
            ["lang", "bytes", "paragraphs", "tokens", "chars/token"],
            rows,
        )
    )
    if json_out:
        emit_json(
            {
                "split": split,
                "tokenizer": tokenizer,
                "languages": {lang: s.to_dict() for lang, s in sorted(stats.items())},
            }
        )


@corpus_app.command("build")
@user_errors
def corpus_build(
    out: Annotated[Path, typer.Argument(help="New folder for the corpus (must not exist).")],
    languages: LanguagesOpt = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where downloads are kept (default: OUT/../.corpus-cache).")
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(help="Debian mirror URL (default: the one in /etc/apt, else deb.debian.org)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Rebuild a STEP-35 style corpus from the Debian packages its manifest names.

    Pure Python: needs network access to a Debian mirror and the npm registry, not a Debian system.
    """
    from step_corpus import build_corpus

    console = console_for(json_out)
    selection = LanguageSelection.parse(languages)
    manifest = build_corpus(
        out,
        cache_dir=cache_dir,
        languages=selection.languages,
        mirror=mirror,
        progress=lambda msg: console.print(msg),
    )
    console.print(f"wrote {out}")
    if json_out:
        emit_json({"out": str(out), "languages": sorted(manifest.get("files", {}))})


def _progress_bar(json_mode: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TextColumn("{task.fields[bpb]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console_for(True),
        transient=False,
    )


@app.command()
@user_errors
@options_from(TrainConfig, flags={"compile": "--compile"})
def train(
    out: Annotated[
        Path, typer.Option(help="Run folder: metrics.jsonl, checkpoints/, summary.json.")
    ],
    config: TrainConfig,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Train a model on the pooled data of the selected languages (the centralized baseline)."""
    from step_model.train import Trainer

    cfg = config
    console = console_for(json_out)
    with console.status("reading and tokenizing the corpus"):
        trainer = Trainer(cfg, out, resume=resume)
    console.print(
        f"{cfg.preset}: {trainer.model.num_params():,} parameters, tokenizer "
        f"{trainer.data.tokenizer.name} ({trainer.data.tokenizer.vocab_size} tokens), "
        f"{len(trainer.data.train)} languages, device {trainer.device}"
        + (f", resuming at step {trainer.step}" if resume else "")
    )
    if trainer.data.skipped:
        console.print(f"left out (less text than one sequence): {', '.join(trainer.data.skipped)}")
    with _progress_bar(json_out) as bar:
        task = bar.add_task(
            "train", total=cfg.steps, completed=trainer.step, loss="-", speed="-", bpb=""
        )

        def on_step(step: int, stats: dict[str, float]) -> None:
            bpb = f"bpb {stats['mean_bpb']:.3f}" if "mean_bpb" in stats else None
            loss, speed = f"{stats['loss']:.3f}", f"{stats['tokens_per_s']:,.0f}"
            if bpb:
                bar.update(task, completed=step, loss=loss, speed=speed, bpb=bpb)
            else:
                bar.update(task, completed=step, loss=loss, speed=speed)

        summary = trainer.run(progress=on_step)
    if summary["bpb"]:
        _print_bpb_table(console, summary["bpb"], "valid bits per byte (uniform: 8.0)")
    quality = (
        f"mean valid bpb {summary['mean_bpb']:.4f}"
        if summary["bpb"]
        else "no held-out text (valid/) to evaluate"
    )
    console.print(
        f"{quality} after {summary['steps']} steps, {summary['tokens']:,} tokens, "
        f"{summary['tokens_per_s']:,.0f} tokens/s; run in {out}"
    )
    if json_out:
        emit_json(summary)


def _print_bpb_table(console: Any, bpb: dict[str, float], title: str) -> None:
    from step_model.evaluate import mean_bpb

    rows = [(lang, f"{v:.4f}") for lang, v in sorted(bpb.items())]
    rows.append(("mean", f"{mean_bpb(bpb):.4f}"))
    console.print(table(title, ["lang", "bpb"], rows))


@app.command("eval")
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A run folder or one of its checkpoints.")],
    corpus: Annotated[Path | None, typer.Option(help="Corpus folder (STEP-35 layout).")] = None,
    split: Annotated[str, typer.Option(help="valid or udhr.")] = "valid",
    languages: LanguagesOpt = None,
    seq_len: Annotated[
        int | None, typer.Option(help="Context length (default: training's).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: JsonFlag = False,
) -> None:
    """Bits per byte per language of a checkpoint on a held-out split."""
    from step_model.checkpoint import load_checkpoint
    from step_model.data import tokenize_texts
    from step_model.evaluate import bits_per_byte, mean_bpb
    from step_model.model import Transformer
    from step_model.train import pick_device

    if split not in ("valid", "udhr"):
        raise StepError(f"--split {split!r}: evaluate on 'valid' or 'udhr' (never on train)")
    ckpt = load_checkpoint(checkpoint, with_optimizer=False)
    context = seq_len or int(ckpt.state.get("train_config", {}).get("seq_len", 256))
    texts = read_corpus(resolve_corpus(corpus), split, LanguageSelection.parse(languages))
    dev = pick_device(device)
    model = Transformer(ckpt.config).to(dev)
    model.load_state_dict(ckpt.weights)
    console = console_for(json_out)
    with console.status(f"evaluating {len(texts)} languages"):
        bpb = bits_per_byte(
            model,
            tokenize_texts(texts, ckpt.tokenizer),
            ckpt.tokenizer.token_bytes(),
            seq_len=context,
            bos_id=ckpt.tokenizer.bos_id,
        )
    _print_bpb_table(console, bpb, f"{split} bits per byte")
    if json_out:
        emit_json(
            {
                "split": split,
                "mean_bpb": mean_bpb(bpb),
                "bpb": bpb,
                "seq_len": context,
                "step": ckpt.state.get("step"),
            }
        )


@app.command()
@user_errors
def verify(
    path: Annotated[Path, typer.Argument(help="A checkpoint folder, or a run folder (LATEST).")],
    federation_key: Annotated[
        Path, typer.Option(help="The federation.pub of the federation that signed it.")
    ],
    json_out: JsonFlag = False,
) -> None:
    """Check that a checkpoint (or an exported model folder with SHA256SUMS) is exactly what the
    federation signed: every file matches SHA256SUMS, no file is outside it, and SHA256SUMS
    carries the federation key's signature (SHA256SUMS.sig)."""
    from step_common.signatures import (
        SIGNATURE_SUFFIX,
        key_fingerprint,
        read_verify_key,
        verify_file,
    )
    from step_model.checkpoint import SUMS, resolve_checkpoint, verify_checkpoint

    key = read_verify_key(federation_key)
    folder = resolve_checkpoint(path)
    verify_checkpoint(folder, required=())
    listed = {line.partition("  ")[2] for line in (folder / SUMS).read_text().splitlines()}
    unsigned = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in listed and p.name not in (SUMS, SUMS + SIGNATURE_SUFFIX)
    )
    if unsigned:
        raise StepError(
            f"{folder} holds files the signature does not cover: {unsigned}; remove them or "
            "get a clean copy from the coordinator admin"
        )
    verify_file(key, folder / SUMS)
    console = console_for(json_out)
    console.print(f"{folder}: {len(listed)} files match SHA256SUMS, signed by the federation key "
                  f"{key_fingerprint(key)}", markup=False)  # fmt: skip
    if json_out:
        emit_json({"verified": True, "path": str(folder), "files": sorted(listed),
                   "federation_key": key_fingerprint(key)})  # fmt: skip


FormatOpt = Annotated[str, typer.Option("--format", help="hf: Hugging Face transformers.")]


def _check_format(value: str) -> None:
    if value != "hf":
        raise StepError(f"--format {value!r}: the one format is hf (Hugging Face transformers)")


@app.command("export")
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint, or a run folder (LATEST).")],
    out: Annotated[Path, typer.Argument(help="A new folder for the exported model.")],
    format_: FormatOpt = "hf",
    shard_size_: Annotated[
        str,
        typer.Option("--shard-size", help="Weights above this split into shards (5GB, 500MB)."),
    ] = "5GB",
    json_out: JsonFlag = False,
) -> None:
    """Write a checkpoint as a Hugging Face model: AutoModelForCausalLM and AutoTokenizer
    load it with no custom code (LlamaForCausalLM, transformers 5)."""
    from step_model.checkpoint import load_checkpoint
    from step_model.hf_format import export_hf, shard_size

    _check_format(format_)
    limit = shard_size(shard_size_)
    console = console_for(json_out)
    with console.status(f"reading {checkpoint}"):
        ckpt = load_checkpoint(checkpoint, with_optimizer=False)
    with byte_progress(console, "writing the weights") as progress:
        folder = export_hf(ckpt, out, limit, progress=progress)
    files = sorted(p.name for p in folder.iterdir())
    console.print(f"exported to {folder}: {', '.join(files)}", markup=False)
    console.print(
        f"load it with AutoModelForCausalLM.from_pretrained({str(folder)!r})", markup=False
    )
    if json_out:
        emit_json({"out": str(folder), "files": files, "params": ckpt.config.num_params()})


@app.command("import")
@user_errors
def import_(
    folder: Annotated[Path, typer.Argument(help="A Hugging Face model folder (LlamaForCausalLM).")],
    out: Annotated[Path, typer.Argument(help="A new folder for the STEP checkpoint.")],
    format_: FormatOpt = "hf",
    json_out: JsonFlag = False,
) -> None:
    """Read a Hugging Face model of this family into a STEP checkpoint, e.g. to warm-start a
    federation (federation.init_from, or --init-from)."""
    from step_model.checkpoint import save_checkpoint
    from step_model.hf_format import import_hf

    _check_format(format_)
    if out.exists():
        raise StepError(f"{out} exists: import into a new folder (or remove it first)")
    console = console_for(json_out)
    with console.status(f"importing {folder}"):
        ckpt = import_hf(folder)
        save_checkpoint(out, ckpt)
    console.print(f"imported {folder} into {out} ({ckpt.tokenizer.name} tokenizer, "
                  f"{ckpt.config.num_params():,} parameters)", markup=False)  # fmt: skip
    if json_out:
        emit_json({"out": str(out), "params": ckpt.config.num_params(),
                   "tokenizer": ckpt.tokenizer.name})  # fmt: skip


def main() -> None:
    app()
