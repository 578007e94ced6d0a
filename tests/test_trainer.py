"""The shared trainer on tiny real trials: it learns, resumes exactly, and fails loudly."""

import math
import time

import pytest
import torch

from transinv import metrics
from transinv.config import ConfigError, from_flat
from transinv.phases import eval_steps
from transinv.trainer import NonFiniteLossError, run_trial

TINY = {
    "model.arch": "tiny_cnn",
    "canvas.size": 32,
    "canvas.item_size": 8,
    "pretrain.steps": 40,
    "finetune.steps": 30,
    "optim.batch_size": 16,
    "eval.every": 10,
    "eval.items": 20,
    "eval.pretrain_items": 40,
    "eval.grid_step": 0.25,
    "run.threads": 1,
}


def tiny(**overrides):
    return from_flat({**TINY, **overrides})


class Interrupt(Exception):
    pass


def collect(config, checkpoint=None, stop_at=None):
    """Run a trial, recording every evaluation; with stop_at=(phase, step), take a checkpoint
    there and interrupt."""
    seen, saved = [], {}

    def on_eval(evaluation, state):
        seen.append(evaluation)
        if stop_at == (evaluation.phase, evaluation.step):
            saved["checkpoint"] = state.checkpoint()
            raise Interrupt

    try:
        result = run_trial(config, on_eval, checkpoint)
    except Interrupt:
        return seen, saved["checkpoint"], None
    return seen, None, result


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("stop_at", [("pretrain", 20), ("finetune", 10), ("pretrain", 40)])
def test_resume_equals_an_uninterrupted_run(stop_at, tmp_path):
    config = tiny()
    whole, _, full = collect(config)
    first, checkpoint, _ = collect(config, stop_at=stop_at)
    # Round-trip the checkpoint through torch.save like a real checkpoint directory.
    torch.save(checkpoint, tmp_path / "state.pt")
    checkpoint = torch.load(tmp_path / "state.pt", weights_only=False)
    rest, _, resumed = collect(config, checkpoint=checkpoint)
    joined = first + rest
    assert [(e.phase, e.step) for e in joined] == [(e.phase, e.step) for e in whole]
    for a, b in zip(joined, whole, strict=True):
        assert a.metrics.keys() == b.metrics.keys()
        for key in a.metrics:
            assert same(a.metrics[key], b.metrics[key]), (a.phase, a.step, key)
    assert full.metrics.keys() == resumed.metrics.keys()
    assert all(same(full.metrics[k], resumed.metrics[k]) for k in full.metrics)


def test_a_checkpoint_resumes_under_other_run_keys_but_not_other_training_keys():
    # run.* says where and how fast a trial runs and what it draws; a study checkpointed before
    # a run.* key existed (its checkpoint lacks the key) must still resume.
    config = tiny()
    _, checkpoint, _ = collect(config, stop_at=("finetune", 10))
    del checkpoint["config"]["run.heatmaps"]
    rest, _, resumed = collect(tiny(**{"run.heatmaps": "none", "run.threads": 2}), checkpoint)
    assert rest[0].phase == "finetune" and resumed is not None
    with pytest.raises(ValueError, match=r"another config \(differs in \['finetune.lr', 'seed'\]"):
        collect(tiny(**{"seed": 1, "finetune.lr": 0.01}), checkpoint)


def test_a_tiny_trial_learns_above_chance_and_reports_every_metric():
    result = run_trial(tiny(**{"pretrain.dataset": "none", "finetune.steps": 120}))
    m = result.metrics
    assert m[metrics.ACC_TRAINED] > 0.5  # chance is 0.1 on glyphs_b
    for key in (metrics.ACC_UNTRAINED, metrics.TRANSFER_RATIO, metrics.CONSISTENCY):
        assert key in m
    assert any(k.startswith("invariance/G/") for k in m)
    assert metrics.FORGETTING_PRETRAIN_ACC not in m  # vanilla: nothing to forget
    assert result.info["finetune/steps_run"] == 120


def test_pretraining_logs_forgetting_of_its_own_task():
    seen, _, result = collect(tiny())
    phases = [e.phase for e in seen]
    assert phases.index("finetune") > 0
    finetune = [e for e in seen if e.phase == "finetune"]
    assert finetune[0].step == 0
    assert all(metrics.FORGETTING_PRETRAIN_ACC in e.metrics for e in finetune)
    assert metrics.PRETRAIN_ACC_GRID in [k for e in seen for k in e.grids]
    assert metrics.drop_key(metrics.FORGETTING_PRETRAIN_ACC) in result.metrics
    assert seen[-1].grids[metrics.ACC_GRID].shape == (4, 4)


def test_nan_loss_names_phase_and_step():
    def poison(evaluation, state):
        if evaluation.phase == "finetune" and evaluation.step == 10:
            with torch.no_grad():
                next(state.net.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="loss is nan at finetune step 11"):
        run_trial(tiny(), poison)


def test_goal_stop_rule_stops_before_the_cap():
    config = tiny(
        **{
            "pretrain.dataset": "none",
            "finetune.steps": 400,
            "finetune.stop": "goal",
            "stop.goal": 0.05,
            "stop.window": 5,
            "stop.patience": 10,
        }
    )
    result = run_trial(config)
    assert result.info["finetune/stop_reason"] == "goal"
    assert result.info["finetune/steps_run"] < 400


def test_log_schedule_has_early_points():
    steps = eval_steps(tiny(**{"eval.schedule": "log", "eval.points": 6}), 1000)
    assert {0, 1, 1000} <= steps and len(steps) <= 7 and min(steps - {0, 1}) < 20


def test_freezing_conv_keeps_conv_weights_fixed():
    seen = {}

    def grab(evaluation, state):
        if evaluation.phase == "finetune":
            seen[evaluation.step] = [p.detach().clone() for p in state.net.features.parameters()]

    run_trial(tiny(**{"finetune.freeze": "conv"}), grab)
    first, last = seen[0], seen[max(seen)]
    assert all(torch.equal(a, b) for a, b in zip(first, last, strict=True))


def test_pretrain_cache_hit_finetunes_exactly_like_pretraining_again(tmp_path):
    """A trial that loads a stored pretraining logs the same evaluations and ends with the same
    metrics as one that pretrains itself; trials that differ only in finetuning share it."""
    cache = {"run.pretrain_cache": str(tmp_path / "cache")}
    alone, _, reference = collect(tiny(**{"finetune.freeze": "fc"}))
    first, _, stored = collect(tiny(**cache))  # another finetuning of the same pretraining
    assert stored.info["pretrain/cache"] == "miss"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    replayed, _, loaded = collect(tiny(**cache, **{"finetune.freeze": "fc"}))
    assert loaded.info["pretrain/cache"] == "hit"
    assert [(e.phase, e.step) for e in replayed] == [(e.phase, e.step) for e in alone]
    for a, b in zip(replayed, alone, strict=True):
        assert all(same(a.metrics[k], b.metrics[k]) for k in b.metrics), (a.phase, a.step)
    assert all(same(loaded.metrics[k], reference.metrics[k]) for k in reference.metrics)
    assert reference.info["pretrain/cache"] == "off"


def test_pretrain_cache_keys_on_pretraining_not_finetuning(tmp_path):
    from transinv.pretrain_cache import pretrain_key

    base = tiny()
    assert pretrain_key(base) == pretrain_key(
        tiny(**{"finetune.lr": 1e-4, "finetune.dataset": "mnist", "run.threads": 2})
    )
    shift_options = ({"model.antialias": "aps"}, {"model.padding": "circular"})
    blur_sizes = ({"model.antialias": "blur"}, {"model.antialias": "blur", "model.blur_size": 5})
    assert pretrain_key(tiny(**blur_sizes[0])) != pretrain_key(tiny(**blur_sizes[1]))
    for changed in ({"seed": 1}, {"optim.lr": 1e-4}, {"pretrain.regime": "left"}, *shift_options):
        assert pretrain_key(tiny(**changed)) != pretrain_key(base), changed
    # Translation over the whole valid range is `whole` itself; a smaller box is not.
    translated = {"pretrain.regime": "translation", "pretrain.translation": 1.0}
    assert pretrain_key(tiny(**translated)) == pretrain_key(base)
    assert pretrain_key(tiny(**{**translated, "pretrain.translation": 0.5})) != pretrain_key(base)


def test_translation_over_the_whole_canvas_trains_exactly_like_whole():
    whole = run_trial(tiny(**{"finetune.steps": 10}))
    translated = run_trial(
        tiny(
            **{"finetune.steps": 10, "pretrain.regime": "translation", "pretrain.translation": 1.0}
        )
    )
    assert all(same(whole.metrics[k], translated.metrics[k]) for k in whole.metrics)


def test_finetune_lr_overrides_the_pretraining_lr():
    seen = {}

    def grab(evaluation, state):
        seen[evaluation.phase] = state.optimizer.param_groups[0]["lr"]

    run_trial(tiny(**{"finetune.lr": 1e-4, "optim.lr": 1e-2}), grab)
    assert seen == {"pretrain": 1e-2, "finetune": 1e-4}


def test_a_trial_books_its_time_by_part_and_a_cache_hit_what_it_saved(tmp_path):
    """Seconds by part cover the trial; a hit spends no pretraining steps and carries the stored
    pretraining's original duration (its steps and evaluations)."""
    cache = {"run.pretrain_cache": str(tmp_path / "cache")}
    started = time.perf_counter()
    _, _, miss = collect(tiny(**cache))
    wall = time.perf_counter() - started
    assert set(miss.seconds) == {"setup", "pretrain", "finetune", "eval", "report"}
    assert all(v > 0 for v in miss.seconds.values())
    assert 0.8 * wall < sum(miss.seconds.values()) <= wall
    _, _, hit = collect(tiny(**cache, **{"finetune.freeze": "fc"}))
    assert "pretrain" not in hit.seconds
    saved = hit.seconds["pretrain_saved"]
    assert miss.seconds["pretrain"] < saved < miss.seconds["pretrain"] + miss.seconds["eval"]


SHIFT_KNOWN_ANSWER = {
    "model.arch": "small_cnn_gap",
    "model.padding": "circular",
    "pretrain.dataset": "none",
    "canvas.size": 32,
    "canvas.item_size": 8,
    "finetune.classes": 4,
    "finetune.steps": 60,
    "optim.batch_size": 16,
    "optim.lr": 3e-3,
    "eval.every": 1000,
    "eval.items": 16,
    "eval.grid_step": 0.15625,  # 5 px: offsets from the trained centre off the stride (8)
    "eval.nway": 4,
    "run.threads": 1,
}


def test_antialias_aps_circular_gap_net_finetuned_at_one_place_is_as_accurate_everywhere():
    """Issue 16's known answer through the whole trainer: a vanilla aps + circular padding +
    GAP net is exactly invariant to circular shifts, and an item moved on the constant
    (normalised) background, inside the canvas, is one; so what it learns at one location holds
    at every grid centre, its output never moves by a pixel, and every item is matched to
    itself at the logits."""
    result = run_trial(from_flat({**SHIFT_KNOWN_ANSWER, "model.antialias": "aps"}))
    m = result.metrics
    assert result.info["pretrain/cache"] == "off" and "pretrain/steps_run" not in result.info
    assert m[metrics.ACC_TRAINED] >= 0.5  # learned: chance is 0.25
    assert m[metrics.ACC_UNTRAINED] == pytest.approx(m[metrics.ACC_TRAINED], abs=0.02)
    assert m[metrics.ACC_NEAR] == pytest.approx(m[metrics.ACC_TRAINED], abs=0.02)
    assert m[metrics.JAGGEDNESS] == 0.0 and m[metrics.JAGGEDNESS_UNTRAINED] == 0.0
    assert m[metrics.JAGGEDNESS_PROB] < 1e-4
    assert m[metrics.NWAY_CHANCE] == 0.25
    assert m[metrics.invariance_key("nway", "logits")] == 1.0
    assert m[metrics.invariance_key("cos", "logits")] == pytest.approx(1.0, abs=1e-4)


def test_antialias_none_control_of_the_known_answer_is_not_invariant():
    """The negative control: the same net, padding and training without adaptive polyphase
    sampling learns the trained place better than the others and is jagged."""
    m = run_trial(from_flat({**SHIFT_KNOWN_ANSWER, "model.antialias": "none"})).metrics
    assert m[metrics.ACC_TRAINED] >= 0.5
    assert m[metrics.ACC_UNTRAINED] < m[metrics.ACC_TRAINED] - 0.1
    assert m[metrics.JAGGEDNESS] > 0.0
    assert m[metrics.invariance_key("cos", "logits")] < 0.999


def test_nway_larger_than_the_finetuning_classes_is_a_config_error_before_training():
    with pytest.raises(ConfigError, match="eval.nway.*4"):
        run_trial(from_flat({**SHIFT_KNOWN_ANSWER, "eval.nway": 5}))
