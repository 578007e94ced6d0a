"""Pretrained networks shared between trials: pretrain once, finetune many ways.

Many trials of a study (and of different studies) share their pretraining: a forgetting study
varies only the finetuning freeze mode and learning rate, a transfer study only the finetuning
dataset. With `run.pretrain_cache` set to a folder, the first such trial stores the network at
the end of its pretraining (weights, the random-number state and its pretraining evaluations);
the others load it and replay the evaluations into their own runs, so every trial's record is
complete and its finetuning is exactly what it would have been without the cache (the global
random state after pretraining depends on nothing else; `test_trainer` checks the equality).

The key is a digest of every config key that can change pretraining or its evaluations: all
keys except `finetune.*` and `run.*` (where and how fast a trial runs). Writes are atomic
(temporary file, then rename), so concurrent trials that pretrain the same thing at once both
succeed and the folder may be shared by the nodes of a cluster. Files are our own pickles: keep
the folder private to the study's users.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transinv.config import TrialConfig, format_value, shapes_pretraining, to_flat

CACHE_VERSION = 1


def pretrain_key(config: TrialConfig) -> str:
    """A digest of the keys that determine a trial's pretraining (16 hex characters)."""
    flat = {k: format_value(v) for k, v in to_flat(config).items() if shapes_pretraining(k)}
    flat.update(regime_aliases(config))
    text = json.dumps({"version": CACHE_VERSION, "config": flat}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def regime_aliases(config: TrialConfig) -> dict[str, str]:
    """The pretraining-regime keys of `config` (formatted values, "" for a key the regime ignores)
    named the one way every equivalent config names them, or {} when they are already: what makes
    two differently written pretrainings one (here, for the cache, and in a report's
    `shared_with`)."""
    if _covers_the_canvas(config):
        # Regime `translation` whose box is the whole valid range draws exactly what `whole`
        # draws (the same sampler call): one pretraining, whichever name a study uses.
        return {"pretrain.regime": "whole", "pretrain.translation": "", "pretrain.location": ""}
    if config.pretrain.regime == "whole" and not config.pretrain.class_regimes:
        return {"pretrain.translation": "", "pretrain.location": ""}
    return {}


def _covers_the_canvas(config: TrialConfig) -> bool:
    from transinv.regimes import Placement, translation_box, valid_range

    p = config.pretrain
    if p.regime != "translation" or p.class_regimes:
        return False
    size, item = config.canvas.size, config.canvas.item_size
    placement = Placement(size, item, 1, 1, p.location, p.translation, config.data.seed)
    lo, hi = valid_range(size, item)
    return translation_box(placement) == ((lo, hi), (lo, hi))


@dataclass(frozen=True)
class Pretrained:
    """The end of one pretraining: what a finetuning trial needs to start from it."""

    net: dict[str, torch.Tensor]
    """State dict of the network with its pretraining head."""
    steps_run: int
    stop_reason: str
    rng: torch.Tensor
    """Torch's global random state right after pretraining."""
    evaluations: list[Any]
    """The pretraining's `evaluation.Evaluation` records, in order."""
    seconds: float = float("nan")
    """What the pretraining took (training and its evaluations): what a cache hit saves."""


class PretrainCache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def path(self, config: TrialConfig) -> Path:
        return self._path(config, pretrain_key(config))

    def _path(self, config: TrialConfig, key: str) -> Path:
        return self.root / f"{config.model.arch}-{key}.pt"

    def load(self, config: TrialConfig) -> Pretrained | None:
        """The stored pretraining for this config, or None (absent or unreadable)."""
        key = pretrain_key(config)
        try:
            blob = torch.load(self._path(config, key), weights_only=False, map_location="cpu")
        except Exception:  # absent, partial or foreign: pretrain again (and overwrite it)
            return None
        if blob.get("version") != CACHE_VERSION or blob.get("key") != key:
            return None
        return Pretrained(**blob["pretrained"])

    def save(self, config: TrialConfig, pretrained: Pretrained) -> Path:
        """Store atomically; concurrent writers of the same key write equal contents."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = pretrain_key(config)
        path = self._path(config, key)
        blob = {
            "version": CACHE_VERSION,
            "key": key,
            "config": {k: format_value(v) for k, v in to_flat(config).items()},
            "pretrained": pretrained.__dict__,
        }
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
