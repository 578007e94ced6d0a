"""The vocabulary of the analyses: what a check and a section are, the study data they read
(through `results.py` only), the registry, and the rules that turn numbers into verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd
from matplotlib.figure import Figure

from transinv import metrics, plots
from transinv.results import curves, final_grids, summarize, varying_keys, with_config

MARGIN = 0.05
"""Smallest difference (in accuracy or G) that counts as an effect."""
NEAR_CHANCE_RATIO = 0.1
"""A transfer ratio below this is 'near chance' away from the trained location."""

HELD, PARTLY, NOT_HELD, NO_DATA, MEASURED = "held", "partly", "not held", "no data", "measured"


@dataclass(frozen=True)
class Check:
    """One expectation and what the study says of it."""

    expectation: str
    measured: str
    verdict: str
    values: dict[str, float] = field(default_factory=dict)
    """The numbers behind the verdict (report.json carries them; tests compare them)."""


@dataclass
class Section:
    analysis: str
    title: str
    question: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    """File name (`<name>.png`) -> figure."""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: str = ""
    """The figure that stands for the section in the README (default: the first)."""

    @property
    def headline_figure(self) -> str | None:
        return self.headline or next(iter(self.figures), None)


@dataclass
class StudyData:
    """A study's finished trials and the means to fetch their curves and grids once."""

    name: str
    runs: pd.DataFrame
    """`results.load_runs` of the study, FINISHED trials only."""
    info: pd.Series
    """`results.study_info`: the parent run."""

    @cached_property
    def conditions(self) -> list[str]:
        """Config keys that vary across the trials, seeds aside: what defines a condition."""
        return varying_keys(self.runs)

    def curves(self, keys: Sequence[str]) -> pd.DataFrame:
        """Long curves of `keys` (run_id, key, step, value) with the condition columns and seed."""
        missing = [k for k in keys if k not in self._curves]
        if missing and len(self.runs):
            fetched = curves(self.runs, missing)
            for key in missing:
                self._curves[key] = fetched[fetched["key"] == key]
        parts = [self._curves.get(k, _EMPTY_CURVE) for k in keys]
        long = pd.concat(parts, ignore_index=True) if parts else _EMPTY_CURVE
        return with_config(long, self.runs, [*self.conditions, "seed"])

    @cached_property
    def grids(self) -> pd.DataFrame:
        grids = final_grids(self.runs) if len(self.runs) else pd.DataFrame()
        if grids.empty:
            return grids
        return grids.merge(self.runs[["run_id", *self.conditions, "seed"]], on="run_id")

    def __post_init__(self) -> None:
        self._curves: dict[str, pd.DataFrame] = {}


_EMPTY_CURVE = pd.DataFrame(columns=["run_id", "key", "step", "value", "timestamp"])

Analysis = Callable[[StudyData], Section]
ANALYSES: dict[str, Analysis] = {}


def register(name: str) -> Callable[[Analysis], Analysis]:
    def add(fn: Analysis) -> Analysis:
        ANALYSES[name] = fn
        return fn

    return add


# ---------------------------------------------------------------------------------------------
# Numbers and verdicts.


def mean_std(values: pd.Series) -> str:
    """`0.42 ± 0.03 (n=3)`; the spread is the std over replicates."""
    values = values.dropna()
    if values.empty:
        return "no trials"
    std = values.std() if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {std:.2f} (n={len(values)})"


def _se(values: pd.Series) -> float:
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _verdict(effect: float, se: float, margin: float) -> str:
    """The one rule: an effect in the expected direction beyond both the margin and two
    standard errors is held; in the right direction only, partly."""
    return HELD if effect > max(margin, 2 * se) else PARTLY if effect > 0 else NOT_HELD


def compare(
    higher: pd.Series, lower: pd.Series, expectation: str, what: str, margin: float = MARGIN
) -> Check:
    """Expect mean(higher) > mean(lower): held if the gap beats the margin and two standard
    errors (Welch), partly if only its sign is right."""
    higher, lower = higher.dropna(), lower.dropna()
    if higher.empty or lower.empty:
        return Check(expectation, f"{what}: missing trials", NO_DATA)
    diff = float(higher.mean() - lower.mean())
    se = math.hypot(_se(higher), _se(lower))
    verdict = _verdict(diff, se, margin)
    measured = f"{what}: {mean_std(higher)} vs {mean_std(lower)}; difference {diff:+.2f}"
    values = {
        "higher_mean": float(higher.mean()),
        "lower_mean": float(lower.mean()),
        "difference": diff,
        "se": se,
        "n_higher": len(higher),
        "n_lower": len(lower),
    }
    return Check(expectation, measured, verdict, values)


def level(
    values: pd.Series,
    bound: float,
    expectation: str,
    what: str,
    above: bool,
    margin: float = 0.0,
) -> Check:
    """Expect mean(values) above (or below) `bound`: held if beyond it by more than both the
    margin and two standard errors, partly if only the mean is beyond it."""
    values = values.dropna()
    if values.empty:
        return Check(expectation, f"{what}: missing trials", NO_DATA)
    mean, se = float(values.mean()), _se(values)
    beyond = (mean - bound) if above else (bound - mean)
    verdict = _verdict(beyond, se, margin)
    measured = f"{what}: {mean_std(values)} ({'>' if above else '<'} {bound:.2f} expected)"
    return Check(expectation, measured, verdict, {"mean": mean, "se": se, "n": len(values)})


def trend(frame: pd.DataFrame, x: str, y: str, expectation: str, what: str) -> Check:
    """Spearman rank correlation of y with x over trials; `measured` (beyond the paper)."""
    data = frame[[x, y]].dropna()
    if len(data) < 3 or data[x].nunique() < 2:
        return Check(expectation, f"{what}: too few trials", NO_DATA)
    rho = float(data[x].rank().corr(data[y].rank()))
    means = data.groupby(x)[y].mean()
    lo, hi = means.index[0], means.index[-1]
    span = f"{means.iloc[0]:.2f} at {x} = {lo:g} to {means.iloc[-1]:.2f} at {hi:g}"
    measured = f"{what}: Spearman rho {rho:+.2f} over {len(data)} trials; mean {span}"
    return Check(expectation, measured, MEASURED, {"rho": rho, "n": len(data)})


def chance_of(runs: pd.DataFrame) -> float:
    if metrics.CHANCE in runs and runs[metrics.CHANCE].notna().any():
        return float(runs[metrics.CHANCE].median())
    return math.nan


def representation_layer(columns: Sequence[str]) -> str | None:
    """The layer whose G stands for 'the representation': the last hidden FC layer, else the
    logits (nets whose pooled features go straight to the head)."""
    layers = list(metrics.layers_of(columns).values())
    fc = [name for name in layers if name.startswith("fc")]
    return (sorted(fc)[-1] if fc else None) or ("logits" if "logits" in layers else None)


def condition_labels(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One condition label per row: `freeze=conv lr=0.0001` from the keys' short names."""
    if not keys:
        return pd.Series("all", index=frame.index)
    parts = [frame[k].map(lambda v, k=k: f"{k.split('.')[-1]}={plots._tick(v)}") for k in keys]
    label = parts[0]
    for part in parts[1:]:
        label = label + " " + part
    return label


def condition_table(frame: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """A condition table for the report: the `by` keys, n, and `mean ± std` per metric (the
    metrics `frame` lacks are left out)."""
    table = summarize(frame, by, [c for c in columns if c and c in frame])
    out = table[[*by, "n"]].copy()
    for column in table.columns:
        if column.endswith(" mean"):
            metric = column.removesuffix(" mean")
            std = table[f"{metric} std"].fillna(0.0)
            out[metric] = [
                "n/a" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"
                for m, s in zip(table[column], std, strict=True)
            ]
    return out


def at_step(long: pd.DataFrame, step: int = 0) -> pd.DataFrame:
    return long[long["step"] == step]


def g_at_start_column(layer: str | None) -> str | None:
    """The column `with_g_at_start` adds: `invariance/G/<layer> at step 0` (None: no layer)."""
    return f"{metrics.invariance_key('G', layer)} at step 0" if layer else None


def g_at_start(study: StudyData, layer: str) -> pd.DataFrame:
    """Per run: G of `layer` on the new items before finetuning (finetune step 0)."""
    start = at_step(study.curves([metrics.invariance_key("G", layer)]))
    return start[["run_id", "value"]].rename(columns={"value": g_at_start_column(layer)})


def with_g_at_start(study: StudyData, layer: str | None) -> pd.DataFrame:
    if layer is None:
        return study.runs
    return study.runs.merge(g_at_start(study, layer), on="run_id", how="left")
