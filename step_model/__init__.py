"""The STEP model family: config and presets, transformer, tokenizers, checkpoints, corpora,
centralized training and per-language evaluation. Plain PyTorch: no Flower, no Opacus."""

__version__ = "0.1.0"
