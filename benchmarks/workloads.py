"""The trials the benchmarks time: the small budget studies run (search_spaces/base/
small_budget.yaml, on one thread as a study's trials are), or with `quick` a tiny trial of a
second or two that still has every part of a real one."""

from __future__ import annotations

from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
TINY = {
    "model.arch": "tiny_cnn",
    "canvas.size": 32,
    "canvas.item_size": 8,
    "pretrain.steps": 40,
    "finetune.steps": 30,
    "eval.items": 16,
    "eval.pretrain_items": 32,
    "eval.grid_step": 0.25,
}


def trial_keys(quick: bool) -> dict:
    """Flat config keys of a small-budget trial on one thread (tiny with `quick`)."""
    budget = yaml.safe_load((PROJECT / "search_spaces/base/small_budget.yaml").read_text())
    return {**budget["fixed"], "run.threads": 1, **(TINY if quick else {})}
