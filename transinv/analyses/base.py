"""The vocabulary of the analyses: what a check and a section are, the study data they read
(through `results.py` only), the registry, and the helpers that turn groups of runs into
checks (an estimate from `stats.py`, judged by `expectations.verdict` against the study's
pre-registered expectation), with Holm's correction over a study's `paper` checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import transinv.analyses.expectations as ex
from transinv import choices, metrics, plots, stats
from transinv.config import KEY_TYPES, format_value, from_flat, shapes_training
from transinv.pretrain_cache import regime_aliases
from transinv.results import curves, final_grids, summarize, varying_keys, with_config

NEAR_CHANCE_RATIO = 0.1
"""A transfer ratio below this is 'not invariant' (near chance away from the trained place)."""
LARGELY_RATIO = 0.5
"""A transfer ratio from this up is 'largely invariant'; between the two, 'partly'."""
LEARNED_OWN_TASK = 0.5
"""A pretraining (or the trained location) that reaches this accuracy on its own task learned
it: a control that did not is no control."""


@dataclass(frozen=True)
class Check:
    """One pre-registered expectation and what the study says of it (report.json's fields)."""

    id: str
    """The registered check (`expectations.CHECKS`), e.g. `transfer.learned`."""
    label: str
    """Which instance: `glyphs -> mnist`, `lr=0.001`; empty when there is one."""
    source: str
    expectation: str
    claim: str
    direction: str
    min_effect: float
    measured: str
    verdict: str
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    """p of the check's own test (two-sided t, or TOST for `within`), unadjusted."""
    p_holm: float = math.nan
    """Holm-adjusted over the study's `paper` checks (NaN for other sources)."""
    n: tuple[int, ...] = ()
    """Runs per group."""
    method: str = ""
    run_ids: tuple[str, ...] = ()
    shared_with: tuple[str, ...] = ()
    """Other checks of the report resting on some of the same trials (`study:check[label]`)."""
    level: str = ""
    """For transfer-ratio checks: the level of invariance the 95 % CI reaches."""
    values: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.id}[{self.label}]" if self.label else self.id

    @property
    def estimate(self) -> stats.Estimate:
        return stats.Estimate(
            self.effect, self.ci_low, self.ci_high, self.p, self.n, self.method, self.values
        )


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
    def plan(self) -> ex.ReportPlan:
        """The expectations registered at launch (the parent run's `report` param)."""
        return ex.plan_from_param(str(self.info.get("report", "") or ""))

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
ANALYSES = choices.ANALYSES
"""Name -> analysis, filled by `@ANALYSES.register()` in the analysis modules."""


# ---------------------------------------------------------------------------------------------
# Numbers, checks and verdicts.


def mean_std(values: pd.Series) -> str:
    """`0.42 ± 0.03 (n=3)`; the spread is the std over replicates."""
    values = values.dropna()
    if values.empty:
        return "no trials"
    std = values.std() if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {std:.2f} (n={len(values)})"


def judge(
    study: StudyData,
    check_id: str,
    label: str,
    estimate: stats.Estimate,
    run_ids: Sequence[str],
    measured: str,
    level: str = "",
) -> Check:
    """A check from its estimate, judged against the study's registered expectation."""
    spec = ex.CHECKS[check_id]
    expectation = study.plan.expectation(check_id)
    p = ex.test_p(expectation, estimate)
    text = f"{spec.expectation} ({label})" if label else spec.expectation
    values = {k: float(v) for k, v in estimate.extra.items()}
    return Check(
        id=check_id,
        label=label,
        source=spec.source,
        expectation=text,
        claim=spec.claim,
        direction=expectation.direction,
        min_effect=expectation.min_effect,
        measured=f"{spec.effect}: {measured}" if measured else spec.effect,
        verdict=ex.verdict(expectation, estimate, p),
        effect=estimate.effect,
        ci_low=estimate.ci_low,
        ci_high=estimate.ci_high,
        p=p,
        n=tuple(int(k) for k in estimate.n),
        method=estimate.method,
        run_ids=tuple(sorted(set(map(str, run_ids)))),
        level=level,
        values=values,
    )


def _ids(*frames: pd.DataFrame) -> list[str]:
    return [r for f in frames if "run_id" in f for r in f["run_id"].dropna()]


def difference(
    study: StudyData, check_id: str, label: str, a: pd.DataFrame, b: pd.DataFrame, column: str
) -> Check:
    """mean of `column` over runs `a` minus over runs `b` (Welch)."""
    x, y = _column(a, column), _column(b, column)
    estimate = stats.welch(x, y)
    return judge(study, check_id, label, estimate, _ids(a, b), f"{mean_std(x)} vs {mean_std(y)}")


def against(
    study: StudyData,
    check_id: str,
    label: str,
    rows: pd.DataFrame,
    values: pd.Series,
    reference: float,
    method: str = stats.ONE_SAMPLE,
) -> Check:
    """mean of per-run `values` (indexed like `rows`) minus `reference` (one-sample or, for
    per-run differences, paired t)."""
    values = pd.Series(values, dtype="float64")
    estimate = stats.one_sample(values, reference, method)
    measured = mean_std(values) + (f" vs {reference:g}" if reference else "")
    return judge(study, check_id, label, estimate, _ids(rows), measured)


def _column(rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in rows:
        return pd.Series(dtype="float64")
    return pd.to_numeric(rows[column], errors="coerce").dropna()


def missing(study: StudyData, check_id: str, label: str, why: str) -> Check:
    """A check the study lacks the trials for."""
    empty = stats.Estimate(math.nan, math.nan, math.nan, math.nan, (0,), "")
    return judge(study, check_id, label, empty, [], why)


def invariance_level(ratios: pd.Series) -> str:
    """The level of invariance the transfer ratio's 95 % CI reaches: `largely invariant` (CI
    low >= 0.5), `partly invariant` (CI low >= 0.1), `not invariant` (CI high < 0.1), else
    `not determined`; with the mean and CI."""
    estimate = stats.one_sample(pd.Series(ratios, dtype="float64").dropna())
    if estimate.empty or math.isnan(estimate.ci_low):
        return "not determined (fewer than 2 runs)"
    if estimate.ci_low >= LARGELY_RATIO:
        name = "largely invariant"
    elif estimate.ci_low >= NEAR_CHANCE_RATIO:
        name = "partly invariant"
    elif estimate.ci_high < NEAR_CHANCE_RATIO:
        name = "not invariant"
    else:
        name = "not determined"
    mean = estimate.extra["mean"]
    return f"{name} (ratio {mean:.2f}, 95% CI {estimate.ci_low:.2f} to {estimate.ci_high:.2f})"


def with_holm(checks: Sequence[Check]) -> list[Check]:
    """Holm's correction over the `paper` checks among `checks` (one study's): each gets
    `p_holm`, and its verdict is judged on `p_holm` instead of p (the CI shown stays the
    unadjusted 95 % interval)."""
    paper = [i for i, c in enumerate(checks) if c.source == ex.PAPER]
    adjusted = stats.holm([checks[i].p for i in paper])
    out = list(checks)
    for i, p_holm in zip(paper, adjusted, strict=True):
        check = checks[i]
        expectation = ex.Expectation(check.direction, check.min_effect)
        verdict = ex.verdict(expectation, check.estimate, p_holm)
        out[i] = dataclasses.replace(check, p_holm=p_holm, verdict=verdict)
    return out


def trial_key(row: pd.Series) -> str:
    """What makes a trial the trial it is: its config, seed included, without `run.*` keys
    (threads, not results), for a vanilla start without the pretraining keys it ignores, and
    with its pretraining regime named as the pretraining cache names it (translation over the
    whole canvas is `whole`). Runs of different studies with the same key are the same trial run
    twice (the pretraining cache and the seeds make them identical)."""
    vanilla = row.get("pretrain.dataset") == "none"
    values = {
        k: format_value(row[k])
        for k in KEY_TYPES
        if k in row.index
        and _present(row[k])
        and shapes_training(k)
        and not (vanilla and k.startswith("pretrain.") and k != "pretrain.dataset")
    }
    if not vanilla:
        values.update(regime_aliases(from_flat(values)))
    return ";".join(f"{k}={v}" for k, v in sorted(values.items()) if v != "")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def unique_trials(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with one run per trial key (a grid that crosses a vanilla start with pretraining
    keys runs the same vanilla trial several times: it counts once)."""
    if rows.empty:
        return rows
    keys = rows.apply(trial_key, axis=1)
    return rows[~keys.duplicated()]


def own_task(study: StudyData, section: Section, check_id: str, by: Sequence[str]) -> None:
    """Each pretraining condition's accuracy on its own task at the end of pretraining
    (`pretrain/acc`, held-out items under its regime): a table, and a sanity check per
    condition. Trials sharing one pretraining (same condition and seed) count once."""
    runs = study.runs
    if metrics.PRETRAIN_ACC not in runs or "pretrain.dataset" not in runs:
        return
    by = [k for k in by if k in runs]
    pretrained = runs[runs["pretrain.dataset"] != "none"]
    pretrained = pretrained.drop_duplicates([*by, "seed"]) if "seed" in runs else pretrained
    if pretrained.empty:
        return
    section.tables.append(
        (
            "Pretraining on its own task (pretrain/acc at the end of pretraining)",
            condition_table(pretrained, by, [metrics.PRETRAIN_ACC]),
        )
    )
    groups = pretrained.groupby(by, sort=True) if by else [((), pretrained)]
    for values, rows in groups:
        values = values if isinstance(values, tuple) else (values,)
        label = ", ".join(map(str, values))
        acc = rows[metrics.PRETRAIN_ACC]
        section.checks.append(against(study, check_id, label, rows, acc, LEARNED_OWN_TASK))


def feature_maps(runs: pd.DataFrame) -> dict[str, str]:
    """Each architecture's final feature map at its canvas, from its registered total stride:
    `small_cnn at 64 px: 8x8 (stride 8)`."""
    from transinv.choices import MODELS

    out: dict[str, str] = {}
    if "model.arch" not in runs or "canvas.size" not in runs:
        return out
    for (arch, size), _ in runs.groupby(["model.arch", "canvas.size"], sort=True):
        if arch not in MODELS:
            continue
        stride = int(MODELS.facts(arch)["stride"])
        side = int(size) // stride
        out[f"{arch} at {int(size)} px"] = f"{side}x{side} (total stride {stride})"
    return out


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
