"""Every architecture at paper size on the CPU, and `paper_scale.yaml`'s first trial in miniature.

At the paper-scale canvas (224 px, 50 px items, 3 channels: the `fixed` block of
search_spaces/paper_scale.yaml), each registered architecture runs a real trial through
`run_trial` with a budget of one step per phase: a pretraining step on glyphs, the head swap, a
finetuning step on glyphs_b, and evaluations on a 2 x 2 grid of centres. What a GPU cluster would
otherwise be first to find (a shape that fails at 224 px, a head with the wrong width, a loss
that is NaN) fails here within a minute per architecture.

Each case runs in a fresh Python process (this file, run as a script), so its peak resident
memory (`ru_maxrss`) is that one trial's, torch's import included; `-s` prints it with the time:

    .venv/bin/python -m pytest -q -s tests/test_paper_size.py     # ~4.3 CPU min: 6.5 min wall
                                                                  # on 2 cores shared with others
    .venv/bin/python -m pytest -q -s tests/test_paper_size.py -k miniature   # before a cluster

What is not here: learning (one step learns nothing; tests/test_trainer.py checks that on the
tiny net) and ImageNet weights (never downloaded; tests/test_models.py loads them when cached).
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.space import load_space, trial_config
from transinv import metrics
from transinv.config import from_flat, to_flat
from transinv.models import MODELS

pytestmark = pytest.mark.slow(minutes=5)

PROJECT = Path(__file__).resolve().parents[1]
PAPER_SCALE = PROJECT / "search_spaces" / "paper_scale.yaml"

MINIATURE = {
    "pretrain.steps": 1,
    "finetune.steps": 1,
    "optim.batch_size": 2,
    "eval.items": 2,
    "eval.pretrain_items": 2,
    "eval.nway": 2,  # N-way matching needs N classes among the 2 held-out items
    # Half the canvas: centres at 25 and 137 px on each axis, so 4 centres, 3 of them at least
    # an item width from the trained one (56, 112).
    "eval.grid_step": 0.5,
    "run.threads": 2,
}
"""The budget of a miniature trial: one step per phase, two test items, a 2 x 2 grid."""
GRID_CENTRES = 4


def paper_fixed() -> dict:
    """The paper-scale study's fixed keys (canvas, optimiser, datasets, stop rules)."""
    return dict(load_space(PAPER_SCALE).fixed)


def run_case(flat: dict) -> dict:
    """Run `flat` as one trial in a fresh process; its report (see `_child`)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, json.dumps(flat)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"trial process failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_s"] = time.monotonic() - started
    return report


def check_trial(report: dict, pretrain_classes: int | None, finetune_classes: int) -> None:
    """What every paper-size trial must show, whatever the architecture; `pretrain_classes` is
    None for a trial without pretraining."""
    m = report["metrics"]
    pretrained = pretrain_classes is not None
    expected = [("finetune", 0), ("finetune", 1)]
    if pretrained:
        expected = [("pretrain", 0), ("pretrain", 1), *expected]
    assert [tuple(e) for e in report["evaluations"]] == expected
    for key in [metrics.FINETUNE_LOSS] + ([metrics.PRETRAIN_LOSS] if pretrained else []):
        assert math.isfinite(report["losses"][key]), (key, report["losses"][key])
    keys = [
        metrics.ACC_TRAINED,
        metrics.ACC_UNTRAINED,
        metrics.FRAC_UNTRAINED_GE_HALF,
        metrics.CONSISTENCY,
    ]
    if pretrained:
        keys.append(metrics.FORGETTING_PRETRAIN_ACC)
    for key in keys:
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert m[metrics.CHANCE] == pytest.approx(1 / finetune_classes)
    for layer in report["probe_layers"]:
        for quantity in ("I", "D", "G"):
            assert math.isfinite(m[metrics.invariance_key(quantity, layer)]), (quantity, layer)
    assert report["acc_grid_shape"] == [2, 2]
    assert report["grid_points"] == GRID_CENTRES
    assert report["head_out"] == finetune_classes
    assert report["finetune_changed"] == {"first_conv": True, "head": True}
    if pretrained:
        assert report["pretrain_head_out"] == pretrain_classes
        assert report["pretrain_changed"] is True
    else:
        assert "pretrain_head_out" not in report


@pytest.mark.parametrize("arch", list(MODELS))
def test_architecture_pretrains_swaps_head_finetunes_and_evaluates_at_224_px(arch):
    flat = {
        **paper_fixed(),
        **MINIATURE,
        "model.arch": arch,
        "pretrain.dataset": "glyphs",
        # Fewer classes than the sources' defaults (30 and 10): drawing 50 px glyphs is most of
        # a small net's case, and the class count is no part of the paper's size.
        "pretrain.classes": 4,
        "finetune.classes": 3,
    }
    report = run_case(flat)
    check_trial(report, pretrain_classes=4, finetune_classes=3)
    assert report["head_kind"] == MODELS.facts(arch)["head"]
    print(
        f"\npaper size {arch} ({report['head_kind']} head): trial {report['trial_s']:.1f} s, "
        f"process {report['process_s']:.1f} s ({report['process_cpu_s']:.1f} CPU s), "
        f"peak RSS {report['maxrss_mib']:.0f} MiB"
    )


def test_paper_scale_miniature_runs_its_first_trial():
    """The study file's first grid trial (first value of every space key), as its trainable
    would build it, with the miniature budget instead of 5000 + 5000 steps."""
    spec = load_space(PAPER_SCALE)
    first = {key: domain.candidates()[0] for key, domain in spec.space.items()}
    config = from_flat(MINIATURE, base=trial_config(spec, first))
    assert (config.canvas.size, config.canvas.item_size, config.canvas.channels) == (224, 50, 3)
    report = run_case(to_flat(config))
    # This study's first trial starts vanilla (pretrain.dataset: none); its sources' default
    # class counts apply, which chance (1 / classes) reveals.
    assert config.pretrain.dataset == "none"
    finetune_classes = round(1 / report["metrics"][metrics.CHANCE])
    check_trial(report, pretrain_classes=None, finetune_classes=finetune_classes)
    print(
        f"\npaper_scale.yaml miniature ({config.model.arch}, pretrain "
        f"{config.pretrain.dataset}): trial {report['trial_s']:.1f} s, "
        f"process {report['process_s']:.1f} s ({report['process_cpu_s']:.1f} CPU s), "
        f"peak RSS {report['maxrss_mib']:.0f} MiB"
    )


# ---------------------------------------------------------------------------------------------
# The trial process.


def _child(flat: dict) -> dict:
    """Run one trial; report what the parent checks (JSON-ready)."""
    import torch

    from transinv.models import build_model
    from transinv.trainer import run_trial

    config = from_flat(flat, source="test_paper_size")
    seen: list[tuple[str, int]] = []
    losses: dict[str, float] = {}
    kept: dict[str, torch.Tensor] = {}
    report: dict = {}

    def first_conv(net):
        return next(net.features.parameters())

    def on_eval(evaluation, state):
        net = state.net
        seen.append((evaluation.phase, evaluation.step))
        key = metrics.PRETRAIN_LOSS if evaluation.phase == "pretrain" else metrics.FINETUNE_LOSS
        losses[key] = evaluation.metrics[key]
        if evaluation.phase == "pretrain":
            if evaluation.step == 0:
                kept["pretrain_conv"] = first_conv(net).detach().clone()
            if evaluation.final:
                report["pretrain_changed"] = not torch.equal(
                    kept["pretrain_conv"], first_conv(net).detach()
                )
        elif evaluation.step == 0:
            kept["conv"] = first_conv(net).detach().clone()
            kept["head"] = net.head.weight.detach().clone()
            report["head_out"] = net.head.out_features
            if state.pretrain_head is not None:
                report["pretrain_head_out"] = state.pretrain_head.out_features
            report["probe_layers"] = list(net.probe_layers)
        if evaluation.phase == "finetune" and evaluation.final:
            report["finetune_changed"] = {
                "first_conv": not torch.equal(kept["conv"], first_conv(net).detach()),
                "head": not torch.equal(kept["head"], net.head.weight.detach()),
            }
            report["acc_grid_shape"] = list(evaluation.grids[metrics.ACC_GRID].shape)

    # Global average pooling leaves one value per channel of the last map (shapes only: a build
    # on the meta device allocates nothing).
    c = config.canvas
    with torch.device("meta"):
        net = build_model(config.model.arch, 2, c.channels, c.size)
        maps = net.features(torch.empty(1, c.channels, c.size, c.size))
        pooled = net.pool(maps)
    report["head_kind"] = "gap" if pooled.shape[1] == maps.shape[1] else "flatten"

    started = time.monotonic()
    result = run_trial(config, on_eval)
    report["trial_s"] = time.monotonic() - started
    report["evaluations"] = seen
    report["losses"] = losses
    report["metrics"] = result.metrics
    report["grid_points"] = result.info["eval/grid_points"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    report["maxrss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return report


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
