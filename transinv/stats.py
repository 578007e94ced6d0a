"""The statistics behind the report's verdicts: an effect with its 95 % confidence interval and
p-value (Welch's t for a difference of two group means, one-sample t for a per-run quantity or a
per-run difference against a reference, a seed bootstrap with a permutation p for rank
correlations, an exact binomial test for a fraction of runs), and Holm's correction.

Pure functions of numbers: no pandas, MLflow or verdict vocabulary here (the verdict rules are
`analyses/base.py`). Every estimate says which method made it, so the report can too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _scipy

ALPHA = 0.05
"""Two-sided level of every test and interval (95 % confidence)."""

WELCH = "Welch t, difference of means"
ONE_SAMPLE = "one-sample t, mean minus reference"
PAIRED = "paired t, per-run difference"
BOOTSTRAP = "seed bootstrap (runs resampled, 2000 draws), permutation p"
BINOMIAL = "exact binomial (Clopper-Pearson CI), fraction minus reference"


@dataclass(frozen=True)
class Estimate:
    """An effect, its 95 % CI and two-sided p against effect 0; `n` per group."""

    effect: float
    ci_low: float
    ci_high: float
    p: float
    n: tuple[int, ...]
    method: str
    extra: dict[str, float] = field(default_factory=dict)
    """Method-specific numbers (group means, the TOST p of an equivalence test)."""

    @property
    def empty(self) -> bool:
        return not self.n or min(self.n) == 0 or math.isnan(self.effect)


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def _t_interval(effect: float, se: float, df: float) -> tuple[float, float, float]:
    """CI and two-sided p of `effect` with standard error `se` on `df` degrees of freedom. A
    zero standard error (identical replicates) gives a point interval: p 0 unless effect is 0."""
    if se == 0.0:
        return effect, effect, (1.0 if effect == 0.0 else 0.0)
    if not math.isfinite(df) or df <= 0:
        return math.nan, math.nan, math.nan
    q = float(_scipy.t.ppf(1 - ALPHA / 2, df))
    p = float(2 * _scipy.t.sf(abs(effect) / se, df))
    return effect - q * se, effect + q * se, p


def welch(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) with Welch's unequal-variance t interval (Welch-Satterthwaite df)."""
    a, b = _clean(a), _clean(b)
    n = (len(a), len(b))
    if min(n) == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, n, WELCH)
    effect = float(a.mean() - b.mean())
    means = {"mean_a": float(a.mean()), "mean_b": float(b.mean())}
    if min(n) < 2:  # a variance needs two replicates
        return Estimate(effect, math.nan, math.nan, math.nan, n, WELCH, means)
    va, vb = a.var(ddof=1) / n[0], b.var(ddof=1) / n[1]
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n[0] - 1) + vb**2 / (n[1] - 1)) if se > 0 else math.inf
    low, high, p = _t_interval(effect, se, df)
    return Estimate(effect, low, high, p, n, WELCH, {**means, "df": df})


def one_sample(
    values: Sequence[float], reference: float = 0.0, method: str = ONE_SAMPLE
) -> Estimate:
    """mean(values) - reference with a one-sample t interval (also the paired test, when the
    values are per-run differences)."""
    x = _clean(values)
    n = (len(x),)
    if n[0] == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, n, method)
    effect = float(x.mean() - reference)
    extra = {"mean": float(x.mean()), "reference": reference}
    if n[0] < 2:
        return Estimate(effect, math.nan, math.nan, math.nan, n, method, extra)
    se = float(x.std(ddof=1) / math.sqrt(n[0]))
    low, high, p = _t_interval(effect, se, n[0] - 1)
    return Estimate(effect, low, high, p, n, method, {**extra, "df": n[0] - 1})


def paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a - b) over pairs (two quantities of the same run): a one-sample t on differences."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return one_sample(diff, 0.0, PAIRED)


def spearman(x: Sequence[float], y: Sequence[float], draws: int = 2000, seed: int = 0) -> Estimate:
    """Spearman's rho of y with x; CI from resampling the runs (a seed bootstrap), p from
    permuting y (the share of permutations with |rho| at least as large)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = (len(x),)
    if n[0] < 3 or len(np.unique(x)) < 2:
        return Estimate(math.nan, math.nan, math.nan, math.nan, n, BOOTSTRAP)

    effect = float(_rho_rows(x[None, :], y[None, :])[0])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n[0], size=(draws, n[0]))
    boot = _rho_rows(x[picks], y[picks])
    low, high = (float(q) for q in np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2]))
    shuffled = np.argsort(rng.random((draws, n[0])), axis=1)
    null = _rho_rows(np.broadcast_to(x, (draws, n[0])), y[shuffled])
    p = float((1 + np.sum(np.abs(null) >= abs(effect) - 1e-12)) / (draws + 1))
    return Estimate(effect, low, high, p, n, BOOTSTRAP)


def _rho_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of xs, ys: [D, n] -> [D]; 0 where a row is constant."""
    rx = _scipy.rankdata(xs, axis=1)
    ry = _scipy.rankdata(ys, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)


def fraction(successes: int, total: int, reference: float) -> Estimate:
    """successes / total - reference, with the Clopper-Pearson 95 % interval and the exact
    two-sided binomial p against `reference`."""
    if total == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, (0,), BINOMIAL)
    test = _scipy.binomtest(successes, total, reference)
    ci = test.proportion_ci(confidence_level=1 - ALPHA, method="exact")
    share = successes / total
    extra = {"fraction": share, "reference": reference}
    return Estimate(
        share - reference,
        ci.low - reference,
        ci.high - reference,
        float(test.pvalue),
        (total,),
        BINOMIAL,
        extra,
    )


def equivalence_p(estimate: Estimate, margin: float) -> float:
    """Two one-sided tests (TOST) that the effect lies inside (-margin, margin): the larger of
    the two one-sided p-values, from the estimate's own interval (t with its degrees of
    freedom; normal when it has none, as a bootstrap). NaN without an interval."""
    if math.isnan(estimate.ci_low) or math.isnan(estimate.ci_high):
        return math.nan
    half = (estimate.ci_high - estimate.ci_low) / 2
    if half == 0.0:
        return 0.0 if abs(estimate.effect) < margin else 1.0
    df = estimate.extra.get("df", math.inf)
    dist = _scipy.t(df) if math.isfinite(df) else _scipy.norm
    se = half / float(dist.ppf(1 - ALPHA / 2))
    lower = float(dist.sf((estimate.effect + margin) / se))
    upper = float(dist.cdf((estimate.effect - margin) / se))
    return max(lower, upper)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order; NaN
    entries stay NaN and do not count towards the family size."""
    p = np.asarray(pvalues, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    m = len(finite)
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
