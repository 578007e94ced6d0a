"""Synthetic studies for known-answer tests of the analyses: trial runs logged to a real MLflow
server in the shape the pipeline gives them (a parent run with the `report` param, trial runs
tagged by `Tracker.trial_run` with the full flat config as params, curves as step-indexed
metrics, final metrics at the last step, the final grid as `final_grid.json`), but with planted
numbers instead of training.

    trial = Trial({"pretrain.dataset": "glyphs", "seed": 0}, {metrics.ACC_UNTRAINED: 0.4})
    log_study(tracker, "ka_transfer_effect", ["transfer"], [trial, ...])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from transinv import config as cfg
from transinv.analyses import plan_from_yaml
from transinv.tracking import Tracker

TIGHT = (-0.01, -0.005, 0.0, 0.005, 0.01)
"""Offsets over 5 seeds: a clear effect."""
WIDE = (-0.1, -0.05, 0.0, 0.05, 0.1)
"""Offsets over 5 seeds: noise that hides a small effect."""


@dataclass
class Trial:
    config: dict[str, Any]
    """Flat config keys (validated by `config.from_flat`; unset keys keep their defaults)."""
    final: dict[str, float] = field(default_factory=dict)
    """Final metrics, logged at the last curve step (as `RunLog` logs its summary)."""
    curves: dict[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    """key -> [(step, value), ...]."""
    grid: dict[str, list[float]] | None = None
    """final_grid.json columns: x, y, acc (and G/<layer>)."""


def seeds(
    config: Mapping[str, Any], offsets: Sequence[float], make: Any, **fixed: Any
) -> list[Trial]:
    """One trial per offset (seed = its index): `make(offset) -> (final, curves)`."""
    out = []
    for seed, offset in enumerate(offsets):
        final, curves = make(offset)
        out.append(Trial({**config, **fixed, "seed": seed}, final, curves))
    return out


def log_study(
    tracker: Tracker,
    study: str,
    analyses: Sequence[str],
    trials: Sequence[Trial],
    parent_params: Mapping[str, Any] | None = None,
) -> str:
    """The study's parent run and one FINISHED trial run per trial; returns the parent id."""
    plan = plan_from_yaml(list(analyses), "synthetic study")
    params = {"space_file": f"{study}.yaml", "report": plan.to_param(), "sampler": "grid"}
    parent = tracker.study_run(study, "synthetic", {**params, **(parent_params or {})}, {})

    def log(index_trial: tuple[int, Trial]) -> None:
        index, trial = index_trial
        flat = cfg.to_flat(cfg.from_flat(trial.config, source=f"synthetic {study}"))
        run_id = tracker.trial_run(study, parent, f"{study}_{index:03d}", flat)
        steps = [s for curve in trial.curves.values() for s, _ in curve]
        by_step: dict[int, dict[str, float]] = {}
        for key, curve in trial.curves.items():
            for step, value in curve:
                by_step.setdefault(step, {})[key] = value
        for step, values in sorted(by_step.items()):
            tracker.log_metrics(run_id, values, step)
        if trial.final:
            tracker.log_metrics(run_id, trial.final, max(steps, default=0))
        if trial.grid is not None:
            tracker.log_table(run_id, trial.grid, "final_grid.json")
        tracker.finish(run_id, "FINISHED")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(log, enumerate(trials)))
    tracker.finish(parent, "FINISHED")
    return parent
