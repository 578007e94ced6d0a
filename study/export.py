"""Copying a study's Optuna trials out of Ray's saved searcher, for optuna-dashboard."""

from __future__ import annotations

from pathlib import Path

import optuna

from study.search import ConstrainedOptunaSearch, optuna_study
from transinv.config import ConfigError


def export_optuna(experiment_dir: Path, name: str, storage_url: str) -> int:
    """Add every trial of the saved searcher to an Optuna study `name` in `storage_url`;
    returns how many were copied. The study is kept in memory while running (a storage there
    breaks restores, see STACK.md), so this is how it reaches a database."""
    if not list(Path(experiment_dir).glob("searcher-state-*.pkl")):
        raise ConfigError(
            f"no saved Optuna searcher in {experiment_dir}: was {name!r} run with an Optuna "
            "sampler (not grid) in this storage?"
        )
    searcher = ConstrainedOptunaSearch()
    searcher.restore_from_dir(str(experiment_dir))
    source = optuna_study(searcher)
    target = optuna.create_study(
        storage=storage_url,
        study_name=name,
        directions=source.directions,
        load_if_exists=True,
    )
    known = {t.number for t in target.trials}
    fresh = [t for t in source.trials if t.number not in known]
    target.add_trials(fresh)
    return len(fresh)
