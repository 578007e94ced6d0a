"""The one training loop of transinv: pretrain on set A under a regime (or start vanilla or from
ImageNet weights), swap in a new head, finetune on set B at one location, and evaluate on a
schedule, handing every evaluation to an `on_eval(evaluation, state)` callback.

What each phase is (data, steps, stop rule, learning rate, head, freezing, evaluation) is built
once in `phases.py`; the loop here runs any phase from that description. What an evaluation
measures lives in `evaluation.py`. The loop knows neither Ray nor MLflow: callers track and
checkpoint from the callback (`state.checkpoint()`), and resume by passing that checkpoint back to
`run_trial`. A resumed trial continues the same curve: on the CPU its losses equal an
uninterrupted run's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transinv import metrics
from transinv.config import TrialConfig, shapes_training, to_flat, validate
from transinv.device import configure_threads, select_device
from transinv.evaluation import Evaluation, TrialResult, curve_points
from transinv.grid import TestGrid, build_grid
from transinv.models import (
    Net,
    build_model,
    load_imagenet_weights,
    parameter_groups,
    reinitialize,
    replace_head,
)
from transinv.phases import Phase, StopRule, build_phases, stop_rule
from transinv.pretrain_cache import PretrainCache, Pretrained
from transinv.regimes import point_to_pixel

log = logging.getLogger("transinv")

CHECKPOINT_VERSION = 1
HEARTBEAT_S = 30.0
"""Seconds between progress lines while training between evaluations."""
DONE = "done"
"""`TrainState.phase` once every phase has run."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the phase and step."""


# ---------------------------------------------------------------------------------------------
# Setup: everything that follows from the config alone (not part of a checkpoint).


@dataclass
class Setup:
    config: TrialConfig
    device: torch.device
    phases: dict[str, Phase]
    """In the order they run."""
    grid: TestGrid
    threads: int


def build_setup(config: TrialConfig, device: torch.device, threads: int) -> Setup:
    c = config.canvas
    trained = point_to_pixel(config.finetune.location, c.size, c.item_size)
    # The stride is a property of the architecture; a throwaway build on the meta device costs
    # nothing.
    with torch.device("meta"):
        stride = build_model(config.model.arch, 2, c.channels, c.size).total_stride
    e = config.eval
    grid = build_grid(c.size, c.item_size, e.grid_step, e.grid_offset, trained, stride)
    return Setup(config, device, build_phases(config, grid, device), grid, threads)


# ---------------------------------------------------------------------------------------------
# Mutable training state: what a checkpoint holds.

STATEFUL = ("net", "optimizer", "pretrain_head", "stop")
"""Fields a checkpoint holds through their `state_dict()` (None when absent)."""
PLAIN = (
    "phase",
    "step",
    "evaluated",
    "stop_reason",
    "steps_run",
    "running",
    "curves",
    "last_metrics",
    "pretrain_cache",
    "seconds",
)
"""Fields a checkpoint holds as they are."""


@dataclass
class TrainState:
    """Where a trial is: phase, step, model, optimiser, stop rule, running sums since the last
    evaluation, the curves needed for forgetting summaries, and (through `setup`) the data
    streams' positions. A checkpoint holds the fields in `STATEFUL` and `PLAIN`."""

    setup: Setup
    net: Net
    phase: str
    step: int = 0
    evaluated: bool = False
    """Whether the evaluation at (phase, step) has been emitted (so a resume does not repeat it)."""
    optimizer: torch.optim.Optimizer | None = None
    pretrain_head: nn.Module | None = None
    """The previous phase's head, kept to measure forgetting of its task."""
    stop: StopRule | None = None
    stop_reason: dict[str, str] = field(default_factory=dict)
    steps_run: dict[str, int] = field(default_factory=dict)
    running: tuple[float, float, int] = (0.0, 0.0, 0)
    """Sums of loss and train accuracy, and the number of steps, since the last evaluation."""
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    """The latest recording phase's metrics (the trial's final metrics once it ends)."""
    pretrain_cache: str = "off"
    """`off`, `miss` (pretrained here and stored) or `hit` (loaded from the cache)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds spent so far by part: each phase's training steps, `setup`, `eval`, `report`
    (the on_eval callback), `pretrain_saved` (a cache hit's original pretraining time)."""

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue this trial exactly (a plain dict for `torch.save`)."""
        out: dict[str, Any] = {"version": CHECKPOINT_VERSION, "config": to_flat(self.setup.config)}
        for name in STATEFUL:
            obj = getattr(self, name)
            out[name] = None if obj is None else obj.state_dict()
        out["net"] = {k: v.detach().cpu() for k, v in out["net"].items()}
        out.update({name: copy.deepcopy(getattr(self, name)) for name in PLAIN})
        out["streams"] = {n: p.data.stream.state() for n, p in self.setup.phases.items()}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        out["rng"] = {"torch": torch.get_rng_state(), "cuda": cuda}
        return out


def initial_state(setup: Setup) -> TrainState:
    """A fresh net (ImageNet weights if configured) in the first phase."""
    c, first = setup.config, next(iter(setup.phases.values()))
    m = c.model
    classes = first.data.items.num_classes
    net = build_model(
        m.arch, classes, c.canvas.channels, c.canvas.size, m.antialias, m.blur_size, m.padding
    )
    if c.pretrain.dataset == "imagenet":
        load_imagenet_weights(net, c.model.arch)
    net = net.to(setup.device, memory_format=torch.channels_last)
    state = TrainState(setup=setup, net=net, phase=first.name)
    enter_phase(state, first)
    return state


def _parts(net: Net) -> dict[str, nn.Module]:
    return {"conv": net.features, "fc": net.classifier}


def enter_phase(state: TrainState, phase: Phase) -> None:
    """The phase's head, transfer and freezing, a fresh optimiser and stop rule, step 0."""
    net, classes = state.net, phase.data.items.num_classes
    if phase.swap_head:
        state.pretrain_head = replace_head(net, classes).requires_grad_(False)
    elif net.head.out_features != classes:  # ImageNet weights come with a 1000-way head
        replace_head(net, classes)
    for part in phase.scrambled:
        reinitialize(_parts(net)[part])
    net.to(state.setup.device, memory_format=torch.channels_last)
    for name, params in parameter_groups(net).items():
        for p in params:
            p.requires_grad_(name not in phase.frozen)
    state.phase, state.step, state.evaluated = phase.name, 0, False
    state.optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], phase.lr)
    state.stop = stop_rule(state.setup.config, phase)
    state.running = (0.0, 0.0, 0)


def restore_state(setup: Setup, checkpoint: dict[str, Any]) -> TrainState:
    """The state a checkpoint describes, for the same config."""
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint version {checkpoint.get('version')} is not {CHECKPOINT_VERSION}"
        )
    made, flat = checkpoint["config"], to_flat(setup.config)
    changed = sorted(
        k for k in flat.keys() | made.keys() if shapes_training(k) and made.get(k) != flat.get(k)
    )
    if changed:
        raise ValueError(f"checkpoint was made with another config (differs in {changed})")
    state = initial_state(setup)
    # Rebuild each later phase's structure (head, freezing) up to the checkpoint's phase before
    # loading its weights.
    for phase in list(setup.phases.values())[1:]:
        if state.phase == checkpoint["phase"]:
            break
        enter_phase(state, phase)
    for name in STATEFUL:
        if checkpoint[name] is not None:
            getattr(state, name).load_state_dict(checkpoint[name])
    for name in PLAIN:  # a field missing from an older checkpoint keeps its initial value
        setattr(state, name, copy.deepcopy(checkpoint.get(name, getattr(state, name))))
    for name, stream_state in checkpoint["streams"].items():
        setup.phases[name].data.stream.restore(stream_state)
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return state


# ---------------------------------------------------------------------------------------------
# The loop.

OnEval = Callable[[Evaluation, TrainState], None]


def _train_step(state: TrainState, phase: Phase, batch_size: int) -> tuple[float, float]:
    images, labels, _ = phase.data.stream.next_batch(batch_size)
    images = images.contiguous(memory_format=torch.channels_last)
    logits = state.net(images)
    loss = nn.functional.cross_entropy(logits, labels)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss.item()} at {state.phase} step {state.step + 1}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    acc = (logits.detach().argmax(1) == labels).float().mean()
    return loss.item(), acc.item()


def _emit(
    state: TrainState, phase: Phase, evaluation: Evaluation, on_eval: OnEval | None, rate: float
) -> None:
    if phase.records:
        state.last_metrics = dict(evaluation.metrics)
        for key, value in curve_points(evaluation).items():
            state.curves.setdefault(key, {})[evaluation.step] = value
    state.evaluated = True
    state.running = (0.0, 0.0, 0)
    shown = {k: v for k, v in evaluation.metrics.items() if not k.startswith("invariance/")}
    text = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in shown.items())
    log.info("%s step %d: %s (%.1f steps/s)", evaluation.phase, evaluation.step, text, rate)
    if on_eval is not None:
        on_eval(evaluation, state)


def run_phase(state: TrainState, phase: Phase, on_eval: OnEval | None) -> None:
    """Train the phase from the state's step to its end, evaluating on schedule."""
    batch_size = state.setup.config.optim.batch_size
    # Train mode, except frozen parts: their BatchNorm statistics must not drift either.
    state.net.train()
    for part in phase.frozen:
        _parts(state.net)[part].eval()
    last_beat = started = time.monotonic()
    start_step = state.step
    reason = state.stop_reason.get(phase.name)
    # Training time is booked at each evaluation, before the callback checkpoints the state.
    mark = time.perf_counter()
    while True:
        done = state.step >= phase.steps or reason is not None
        if (state.step in phase.schedule or done) and not state.evaluated:
            rate = (state.step - start_step) / max(time.monotonic() - started, 1e-9)
            loss_sum, acc_sum, count = state.running
            running = (loss_sum / count, acc_sum / count) if count else (math.nan, math.nan)
            mark = _book(state, phase.name, mark)
            evaluation = phase.evaluate(state.net, state.pretrain_head, state.step, running, done)
            mark = _book(state, "eval", mark)
            _emit(state, phase, evaluation, on_eval, rate)
            mark = _book(state, "report", mark)
        if done:
            break
        loss, acc = _train_step(state, phase, batch_size)
        state.step += 1
        state.evaluated = False
        loss_sum, acc_sum, count = state.running
        state.running = (loss_sum + loss, acc_sum + acc, count + 1)
        if state.stop is not None:
            reason = state.stop.update(loss, acc)
            if reason is not None:
                state.stop_reason[phase.name] = reason
        if time.monotonic() - last_beat > HEARTBEAT_S:
            last_beat = time.monotonic()
            rate = (state.step - start_step) / (last_beat - started)
            loss_mean = state.running[0] / state.running[2]
            log.info(
                "%s step %d/%d: loss=%.3f (%.1f steps/s)",
                *(phase.name, state.step, phase.steps, loss_mean, rate),
            )
    state.stop_reason.setdefault(phase.name, "steps")
    state.steps_run[phase.name] = state.step


def _book(state: TrainState, part: str, since: float) -> float:
    """Add the seconds since `since` to `part`; returns now."""
    now = time.perf_counter()
    state.seconds[part] = state.seconds.get(part, 0.0) + now - since
    return now


def replay(state: TrainState, phase: Phase, stored: Pretrained, on_eval: OnEval | None) -> None:
    """A phase's stored end instead of running it: its weights and random state, and its
    evaluations through `on_eval`, so the trial's record is the same either way."""
    state.net.load_state_dict(stored.net)
    state.step = state.steps_run[phase.name] = stored.steps_run
    state.stop_reason[phase.name] = stored.stop_reason
    state.pretrain_cache = "hit"
    state.seconds["pretrain_saved"] = stored.seconds
    torch.set_rng_state(stored.rng)
    # A checkpoint taken during the replay says "phase done" (with the random state the next
    # phase starts from), never "at step 0 with trained weights".
    state.evaluated = True
    for evaluation in stored.evaluations:
        _emit(state, phase, evaluation, on_eval, rate=0.0)


def run_and_store(
    state: TrainState, phase: Phase, cache: PretrainCache, on_eval: OnEval | None
) -> None:
    """Run the phase and store its end for other trials."""
    evaluations: list[Evaluation] = []

    def collect(evaluation: Evaluation, state: TrainState) -> None:
        evaluations.append(evaluation)
        if on_eval is not None:
            on_eval(evaluation, state)

    before = state.seconds.get(phase.name, 0.0) + state.seconds.get("eval", 0.0)
    run_phase(state, phase, collect)
    seconds = state.seconds.get(phase.name, 0.0) + state.seconds.get("eval", 0.0) - before
    net = {k: v.detach().cpu().clone() for k, v in state.net.state_dict().items()}
    n, reason = state.steps_run[phase.name], state.stop_reason[phase.name]
    stored = Pretrained(net, n, reason, torch.get_rng_state(), evaluations, seconds)
    cache.save(state.setup.config, stored)
    state.pretrain_cache = "miss"


def run_trial(
    config: TrialConfig,
    on_eval: OnEval | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> TrialResult:
    """Pretrain, finetune and evaluate one trial; resume from `checkpoint` when given.

    Raises NonFiniteLossError (naming phase and step) if the loss diverges.
    """
    validate(config)
    started = time.perf_counter()
    threads = configure_threads(config.run.threads)
    device = select_device(config.run.device)
    torch.manual_seed(config.seed)
    setup = build_setup(config, device, threads)
    state = restore_state(setup, checkpoint) if checkpoint else initial_state(setup)
    _book(state, "setup", started)
    headline = ("model.arch", "pretrain.dataset", "pretrain.regime", "finetune.dataset", "seed")
    flat = to_flat(config)
    log.info(
        "trial on %s with %d threads: %s",
        *(device, threads, " ".join(f"{k}={flat[k]}" for k in headline)),
    )
    phases = list(setup.phases.values())
    start = len(phases) if state.phase == DONE else list(setup.phases).index(state.phase)
    for phase in phases[start:]:
        if state.phase != phase.name:
            enter_phase(state, phase)
        # Only a phase run whole here is stored, or replaced by a stored one: a resumed one's
        # earlier evaluations are not at hand.
        cache = phase.cache if state.step == 0 and not state.evaluated else None
        stored = cache.load(config) if cache is not None else None
        if stored is not None:
            replay(state, phase, stored, on_eval)
        elif cache is not None:
            run_and_store(state, phase, cache, on_eval)
        else:
            run_phase(state, phase, on_eval)
    state.phase = DONE
    final = dict(state.last_metrics)
    final.update(metrics.forgetting_summary(state.curves))
    info = {
        **{f"{p}/stop_reason": r for p, r in state.stop_reason.items()},
        **{f"{p}/steps_run": n for p, n in state.steps_run.items()},
        **{f"eval/{k}": v for k, v in setup.grid.describe().items()},
        "finetune/trained_centre_px": setup.grid.trained,
        "pretrain/cache": state.pretrain_cache,
        "device": str(device),
        "threads": threads,
    }
    return TrialResult(final, info, state.curves, setup.grid, dict(state.seconds))
