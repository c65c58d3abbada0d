"""node/dp_trainer.py replaces one Opacus function at import time; it must be the one it was
written against."""

from __future__ import annotations

import hashlib
import inspect

import opacus

from node import dp_trainer

REPLACED_SHA256 = "473937338191170b57f234af1790b7c4802b33121fc64bee9a08d5d565f3b20b"
"""sha256 of the source of opacus 1.6's ``create_or_accumulate_grad_sample``."""


def test_the_replaced_opacus_function_is_the_one_dp_trainer_was_written_against() -> None:
    source = inspect.getsource(dp_trainer._opacus_store)
    assert hashlib.sha256(source.encode()).hexdigest() == REPLACED_SHA256, (
        f"opacus {opacus.__version__} changed create_or_accumulate_grad_sample: check that "
        "node/dp_trainer._store_grad_sample still does what it does (the accumulation rules), "
        "then update REPLACED_SHA256 and the opacus pin in pyproject.toml"
    )
    assert opacus.__version__.startswith("1.6.")


def test_the_replacement_is_in_place_in_both_opacus_modules() -> None:
    from opacus.grad_sample import grad_sample_module, grad_sample_module_fast_gradient_clipping

    assert grad_sample_module.create_or_accumulate_grad_sample is dp_trainer._store_grad_sample
    fgc = grad_sample_module_fast_gradient_clipping
    assert fgc.create_or_accumulate_grad_sample is dp_trainer._store_grad_sample
