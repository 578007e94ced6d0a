"""Known answers for every registered analysis: synthetic studies logged to a real MLflow server
(tests/synthetic_runs.py) with a planted effect, a planted null and a planted reversed effect,
reported by the real `build_report`: the verdicts must be `held`, `not shown` and
`contradicted` respectively (the regime search, which measures, must name the planted best).

    .venv/bin/pytest tests/test_analyses_known_answers.py -q      # ~1 min on 2 cores
"""

from __future__ import annotations

import json

import pytest
from synthetic_runs import TIGHT, WIDE, Trial, log_study, seeds

from transinv import metrics
from transinv.analyses import ANALYSES, CONTRADICTED, HELD, MEASURED, NOT_SHOWN
from transinv.regimes import point_to_pixel
from transinv.report import build_report
from transinv.tracking import Tracker

pytestmark = pytest.mark.slow(minutes=3)

KINDS = {"effect": HELD, "null": NOT_SHOWN, "reversed": CONTRADICTED}
G = metrics.invariance_key("G", "fc1")
G_CONV = metrics.invariance_key("G", "conv4")
FORGETTING = metrics.drop_key(metrics.FORGETTING_PRETRAIN_ACC)
OBJECTIVES = [[metrics.ACC_UNTRAINED, "max"], [metrics.ACC_TRAINED, "max"], [FORGETTING, "min"]]


def _ratio_final(ratio: float, **extra: float) -> dict[str, float]:
    """Final metrics of a run whose transfer ratio is `ratio` (chance 0.1, acc@trained 1)."""
    return {
        metrics.CHANCE: 0.1,
        metrics.ACC_TRAINED: 1.0,
        metrics.ACC_UNTRAINED: 0.1 + 0.9 * ratio,
        metrics.TRANSFER_RATIO: ratio,
        metrics.PRETRAIN_ACC: 0.9,
        **extra,
    }


def _constant(final: dict[str, float]):
    return lambda offset: (final, {})


# Each scenario: kind -> (trials, {check name: expected verdict}); names are `id[label]`.


def not_invariant(kind: str):
    location = (0.25, 0.5)
    tx, ty = point_to_pixel(location, 64, 16)
    ratio, trained, near = {
        "effect": (0.0, 1.0, 0.1),
        "null": (0.1, 1.0, 1.0),
        "reversed": (0.5, 0.5, 0.9),
    }[kind]
    spread = TIGHT if kind != "null" else WIDE
    trials = []
    for seed, offset in enumerate(spread):
        final = _ratio_final(ratio + offset)
        final[metrics.ACC_TRAINED] = trained
        # The grid holds the trained centre itself (acc 0: it must not enter any shift bin),
        # a centre 6 px (3/8 item) away and one 2 items away.
        grid = {
            "x": [tx, tx + 6, tx + 32],
            "y": [ty, ty, ty],
            "acc": [0.0, near + (offset if kind == "null" else 0.0), 0.1],
        }
        config = {"pretrain.dataset": "none", "finetune.location": list(location), "seed": seed}
        trials.append(Trial(config, final, {}, grid))
    verdict = KINDS[kind]
    hurts = {"effect": HELD, "null": NOT_SHOWN, "reversed": CONTRADICTED}[kind]
    return trials, {
        "not_invariant.near_chance": verdict,
        "not_invariant.fraction_shift_hurts": hurts,
    }


def transfer(kind: str):
    pre, van = {"effect": (0.6, 0.0), "null": (0.05, 0.05), "reversed": (0.0, 0.3)}[kind]
    spread = WIDE if kind == "null" else TIGHT
    base = {"finetune.dataset": "mnist", "finetune.classes": 10}
    trials = seeds(
        base, spread, lambda o: (_ratio_final(pre + o), {}), **{"pretrain.dataset": "glyphs"}
    )
    trials += seeds(
        base, spread, lambda o: (_ratio_final(van + o), {}), **{"pretrain.dataset": "none"}
    )
    return trials, {"transfer.learned[glyphs -> mnist]": KINDS[kind]}


def coverage_controls(kind: str):
    whole, control, vanilla = {
        "effect": (0.6, 0.0, 0.0),
        "null": (0.2, 0.2, 0.2),
        "reversed": (0.0, 0.6, 0.0),
    }[kind]
    spread = WIDE if kind == "null" else TIGHT
    glyphs = {"pretrain.dataset": "glyphs"}
    trials = seeds(
        glyphs, spread, lambda o: (_ratio_final(whole + o), {}), **{"pretrain.regime": "whole"}
    )
    trials += seeds(
        glyphs,
        spread,
        lambda o: (_ratio_final(control + o), {}),
        **{"pretrain.regime": "class_region"},
    )
    # Vanilla crossed with two regimes, as a grid over both keys runs it: the same trials.
    for regime in ("whole", "class_region"):
        trials += seeds(
            {"pretrain.dataset": "none"},
            spread,
            lambda o: (_ratio_final(vanilla + o), {}),
            **{"pretrain.regime": regime},
        )
    verdict = KINDS[kind]
    return trials, {
        "coverage_controls.below_whole[class_region]": verdict,
        "coverage_controls.like_vanilla[class_region]": verdict,
    }


def head_and_stride(kind: str):
    gap, flat, inflation = {
        "effect": (0.5, 0.1, 0.1),
        "null": (0.3, 0.3, 0.0),
        "reversed": (0.1, 0.5, -0.1),
    }[kind]
    spread = WIDE if kind == "null" else TIGHT
    trials = []
    for arch, acc in (("small_cnn_gap", gap), ("small_cnn", flat)):
        for dataset in ("none", "glyphs"):

            def make(o, acc=acc):
                final = {
                    metrics.ACC_UNTRAINED: acc + o,
                    metrics.ACC_TRAINED: 1.0,
                    metrics.CHANCE: 0.1,
                    metrics.ACC_UNTRAINED_UNALIGNED: acc,
                    metrics.ACC_UNTRAINED_ALIGNED: acc + inflation + o,
                }
                return final, {}

            trials += seeds({"model.arch": arch, "pretrain.dataset": dataset}, spread, make)
    verdict = KINDS[kind]
    return trials, {
        "head_and_stride.gap_vanilla": verdict,
        "head_and_stride.aligned_overstates": verdict,
    }


def architectures(kind: str):
    van, pre = {"effect": (0.0, 0.6), "null": (0.1, 0.1), "reversed": (0.5, 0.0)}[kind]
    spread = WIDE if kind == "null" else TIGHT
    arch = {"model.arch": "small_cnn"}
    trials = seeds(
        arch, spread, lambda o: (_ratio_final(van + o), {}), **{"pretrain.dataset": "none"}
    )
    trials += seeds(
        arch, spread, lambda o: (_ratio_final(pre + o), {}), **{"pretrain.dataset": "glyphs"}
    )
    verdict = KINDS[kind]
    return trials, {
        "architectures.vanilla_not_invariant[small_cnn]": verdict,
        "architectures.learns_invariance[small_cnn, glyphs]": verdict,
    }


def _ranked(kind: str, xs, key: str, fixed: dict, extra_final=None):
    """Four seeds per x; y rises with x (effect), ignores it (null: the same values at every x,
    rho 0) or falls (reversed)."""
    trials = []
    for i, x in enumerate(xs):
        for seed, noise in enumerate((0.0, 0.01, 0.02, 0.03)):
            level = {"effect": 0.2 * i, "null": 0.0, "reversed": -0.2 * i}[kind]
            acc = 0.5 + level + (noise if kind != "null" else 0.1 * seed)
            final = {
                metrics.ACC_UNTRAINED: acc,
                metrics.ACC_TRAINED: 1.0,
                metrics.CHANCE: 0.1,
                metrics.PRETRAIN_ACC: 0.9,
                **(extra_final(seed) if extra_final else {}),
            }
            curves = {
                metrics.ACC_UNTRAINED: [(0, 0.1), (50, acc), (100, acc)],
                G: [(0, 0.5), (100, 0.4)],
            }
            trials.append(Trial({**fixed, key: x, "seed": seed}, final, curves))
    return trials


def dose_response(kind: str):
    fixed = {
        "pretrain.dataset": "glyphs",
        "pretrain.regime": "translation",
        "model.arch": "small_cnn",
    }
    trials = _ranked(kind, (0.0, 0.5, 1.0), "pretrain.translation", fixed)
    return trials, {"dose_response.grows[all]": KINDS[kind]}


def duration(kind: str):
    early = {"effect": 4, "null": 2, "reversed": 0}[kind]  # of 4 seeds per duration, peak early
    drop = metrics.drop_key(metrics.ACC_UNTRAINED)

    def extra(seed: int) -> dict[str, float]:
        return {drop: 0.1 if seed < early else 0.0}  # 0.0: the peak ties the final value

    fixed = {"pretrain.dataset": "glyphs", "model.arch": "small_cnn"}
    trials = _ranked(kind, (0, 250, 500), "pretrain.steps", fixed, extra)
    return trials, {"duration.longer_more": KINDS[kind], "duration.peaks_early": KINDS[kind]}


def representations(kind: str):
    pre, van = {"effect": (0.8, 0.0), "null": (0.3, 0.3), "reversed": (0.0, 0.5)}[kind]
    spread = WIDE if kind == "null" else TIGHT
    trials = []
    for dataset, g in (("glyphs", pre), ("none", van)):

        def make(o, g=g):
            curves = {G: [(0, g + o), (100, g)], G_CONV: [(0, 0.0), (100, 0.0)]}
            return {metrics.ACC_UNTRAINED: 0.3}, curves

        trials += seeds({"pretrain.dataset": dataset, "pretrain.regime": "whole"}, spread, make)
    return trials, {
        "representations.g_vs_vanilla[dataset=glyphs vs vanilla]": KINDS[kind],
        "representations.conv_equivariant[conv4]": HELD,  # by construction, in every kind
    }


def forgetting(kind: str):
    spread = WIDE if kind == "null" else TIGHT
    # (G start, G end, final acc@untrained, acc@untrained peak - final) per freeze mode.
    none, head = {
        "effect": ((0.8, 0.3, 0.3, 0.3), (0.8, 0.8, 0.7, 0.0)),
        "null": ((0.8, 0.8, 0.5, 0.2), (0.8, 0.8, 0.5, 0.2)),
        "reversed": ((0.3, 0.8, 0.7, 0.0), (0.8, 0.8, 0.3, 0.3)),
    }[kind]
    trials = []
    for freeze, (g0, g1, acc, drop) in (("none", none), ("all_but_head", head)):

        def make(o, g0=g0, g1=g1, acc=acc, drop=drop, freeze=freeze):
            end = g1 + (o if freeze == "none" else 0.0)
            curves = {
                G: [(0, g0), (100, (g0 + end) / 2), (200, end)],
                metrics.FORGETTING_PRETRAIN_ACC: [(0, 0.9), (200, 0.5)],
                metrics.ACC_UNTRAINED: [(0, 0.1), (100, acc + drop), (200, acc + o)],
            }
            final = {
                metrics.ACC_UNTRAINED: acc + o,
                metrics.ACC_TRAINED: 1.0,
                metrics.drop_key(metrics.ACC_UNTRAINED): drop + o,
            }
            return final, curves

        trials += seeds({"pretrain.dataset": "glyphs", "finetune.freeze": freeze}, spread, make)
    verdict = KINDS[kind]
    return trials, {
        "forgetting.g_falls": verdict,
        "forgetting.trunk_training_erases": verdict,
        "forgetting.acc_untrained_falls": verdict,
        "forgetting.head_only_keeps_g": HELD,  # by construction, in every kind
    }


def regime_search(kind: str):
    best = {"effect": "glyphs", "null": "mnist", "reversed": "none"}[kind]
    trials = []
    for dataset in ("none", "glyphs", "mnist"):
        acc = 0.6 if dataset == best else 0.2
        trials += seeds(
            {"pretrain.dataset": dataset},
            TIGHT[:3],
            lambda o, acc=acc: ({metrics.ACC_UNTRAINED: acc + o, metrics.ACC_TRAINED: 1.0}, {}),
        )
    return trials, {"regime_search.best": MEASURED, "best": best}


def tradeoffs(kind: str):
    """The planted best keeps acc@trained >= 0.95 with ratio 0.8; mnist's ratio 0.9 comes at
    acc@trained 0.9, so the check must pass it over."""
    best = {"effect": "glyphs", "null": "omniglot", "reversed": "none"}[kind]
    trials = []
    for dataset in ("none", "glyphs", "mnist", "omniglot"):
        ratio = 0.8 if dataset == best else 0.9 if dataset == "mnist" else 0.2
        trained = 0.9 if dataset == "mnist" else 1.0

        def make(o, ratio=ratio, trained=trained):
            final = _ratio_final(ratio + o, **{FORGETTING: 0.3 - o})
            final[metrics.ACC_TRAINED] = trained
            return final, {}

        trials += seeds({"pretrain.dataset": dataset}, TIGHT[:3], make)
    return trials, {"tradeoffs.most_transfer": MEASURED, "best": best}


def builtin_vs_learned(kind: str):
    """(antialias, arch, pretrain.dataset) -> (acc@trained, acc_near, acc@untrained,
    jaggedness); the offsets move the last three."""
    planted = {
        "effect": {
            ("aps", "small_cnn_gap", "none"): (0.9, 0.9, 0.9, 0.0),
            ("aps", "small_cnn_gap", "glyphs"): (0.9, 0.9, 0.9, 0.0),
            ("none", "small_cnn", "glyphs"): (1.0, 0.6, 0.4, 0.2),
            "blur vanilla": (1.0, 0.6, 0.2, 0.05),
            "none vanilla": (1.0, 0.3, 0.2, 0.2),
        },
        "null": {
            ("aps", "small_cnn_gap", "none"): (1.0, 0.5, 0.5, 0.1),
            ("aps", "small_cnn_gap", "glyphs"): (1.0, 0.5, 0.5, 0.1),
            ("none", "small_cnn", "glyphs"): (1.0, 0.5, 0.5, 0.1),
            "blur vanilla": (1.0, 0.4, 0.2, 0.1),
            "none vanilla": (1.0, 0.4, 0.2, 0.1),
        },
        "reversed": {
            ("aps", "small_cnn_gap", "none"): (1.0, 0.3, 0.3, 0.1),
            ("aps", "small_cnn_gap", "glyphs"): (1.0, 0.9, 0.9, 0.0),
            ("none", "small_cnn", "glyphs"): (1.0, 0.6, 0.6, 0.1),
            "blur vanilla": (1.0, 0.2, 0.6, 0.3),
            "none vanilla": (1.0, 0.5, 0.2, 0.1),
        },
    }[kind]
    spread = WIDE if kind == "null" else TIGHT
    trials = []
    for antialias in ("none", "blur", "aps"):
        for arch in ("small_cnn", "small_cnn_gap"):
            for dataset in ("none", "glyphs"):
                vanilla = f"{antialias} vanilla" if dataset == "none" else None
                values = planted.get((antialias, arch, dataset)) or planted.get(
                    vanilla, (1.0, 0.5, 0.3, 0.1)
                )

                def make(o, values=values):
                    trained, near, far, jagged = values
                    final = {
                        metrics.CHANCE: 0.1,
                        metrics.ACC_TRAINED: trained,
                        metrics.ACC_NEAR: near + o,
                        metrics.ACC_UNTRAINED: far + o,
                        metrics.JAGGEDNESS: jagged + o,
                        metrics.PRETRAIN_ACC: 0.9,
                    }
                    return final, {}

                config = {"model.arch": arch, "model.antialias": antialias}
                trials += seeds(config, spread, make, **{"pretrain.dataset": dataset})
    verdict = KINDS[kind]
    expected = {
        f"builtin_vs_learned.{check}": verdict
        for check in ("designed_vs_learned", "pretraining_unneeded")
    }
    for head in ("flatten", "gap"):
        for check in ("blur_helps_local", "blur_less_jagged", "blur_not_global"):
            expected[f"builtin_vs_learned.{check}[{head}]"] = verdict
    if kind == "effect":
        expected["builtin_vs_learned.aps_gap_exact"] = HELD
    return trials, expected


SCENARIOS = {
    f.__name__: f
    for f in (
        not_invariant,
        transfer,
        coverage_controls,
        head_and_stride,
        architectures,
        dose_response,
        duration,
        representations,
        forgetting,
        regime_search,
        tradeoffs,
        builtin_vs_learned,
    )
}


def test_every_registered_analysis_has_known_answers():
    assert set(SCENARIOS) == set(ANALYSES)


@pytest.fixture(scope="module")
def reported(tracking_uri, tmp_path_factory):
    """Every scenario of every analysis logged as its own study, then one report of all."""
    tracker = Tracker(tracking_uri)
    expected, names = {}, []
    for analysis, scenario in SCENARIOS.items():
        for kind in KINDS:
            study = f"ka_{analysis}_{kind}"
            trials, verdicts = scenario(kind)
            extra = {
                "regime_search": {"constraints": "[]"},
                "tradeoffs": {"objectives": json.dumps(OBJECTIVES)},
            }.get(analysis)
            log_study(tracker, study, [analysis], trials, extra)
            expected[study] = verdicts
            names.append(study)
    out = tmp_path_factory.mktemp("ka_report")
    build_report(names, tracking_uri, out, log_to_mlflow=False)
    return expected, json.loads((out / "report.json").read_text()), out


@pytest.mark.parametrize("analysis", sorted(SCENARIOS))
def test_planted_effect_null_and_reversal_give_held_not_shown_contradicted(reported, analysis):
    expected, data, _ = reported
    studies = {s["name"]: s for s in data["studies"]}
    for kind in KINDS:
        study = studies[f"ka_{analysis}_{kind}"]
        checks = {
            (f"{c['id']}[{c['label']}]" if c["label"] else c["id"]): c
            for section in study["sections"]
            for c in section["checks"]
        }
        for name, verdict in expected[study["name"]].items():
            if name == "best":  # a search's check measures: it must name the planted best
                (check,) = [c for c in checks.values() if c["verdict"] == MEASURED]
                assert f"pretrain.dataset={verdict}" in check["measured"], check
                continue
            assert name in checks, (kind, name, sorted(checks))
            check = checks[name]
            assert check["verdict"] == verdict, (kind, name, check)


def test_report_json_carries_the_statistics_of_every_check(reported):
    _, data, out = reported
    fields = {
        "source",
        "expectation",
        "min_effect",
        "effect",
        "ci_low",
        "ci_high",
        "p",
        "n",
        "verdict",
        "shared_with",
        "run_ids",
        "method",
        "p_holm",
    }
    for study in data["studies"]:
        for section in study["sections"]:
            for check in section["checks"]:
                assert fields <= set(check), set(check) ^ fields
                assert check["source"] in ("paper", "hypothesis", "sanity")
                if check["source"] == "paper" and check["p"] is not None:
                    assert check["p_holm"] >= check["p"]
    assert data["methods"].startswith("Each check states its pre-registered expectation")
    text = (out / "report.md").read_text()
    assert "## The paper's claims" in text and "## Instrument checks" in text
    assert '"A CNN trained from scratch on objects at one location systematically fails' in text


def test_vanilla_trials_run_twice_count_once_and_name_their_sharers(reported):
    """The coverage scenario logs each vanilla trial twice (crossed with two regimes): n is 5,
    not 10, and checks reading the same vanilla trials name each other."""
    _, data, _ = reported
    (study,) = [s for s in data["studies"] if s["name"] == "ka_coverage_controls_effect"]
    checks = {c["id"]: c for s in study["sections"] for c in s["checks"]}
    assert checks["coverage_controls.like_vanilla"]["n"] == [5, 5]
    below = checks["coverage_controls.below_whole"]
    assert any("pretraining_learned" in name for name in below["shared_with"])


def test_falloff_bins_count_the_trained_centre_once(reported):
    """The planted grid puts accuracy 0 on the trained centre itself: were it binned, the
    first bin would read 0; the fall-off table's first bin is acc@trained alone."""
    _, data, _ = reported
    (study,) = [s for s in data["studies"] if s["name"] == "ka_not_invariant_effect"]
    (section,) = study["sections"]
    table = next(t for t in section["tables"] if t["title"].startswith("Accuracy by shift"))
    first = [row for row in table["rows"] if row["shift (item widths)"] == 0.0]
    assert first and all(row["mean"] == pytest.approx(1.0) for row in first)
    assert not [row for row in table["rows"] if row["shift (item widths)"] == 0.25]
