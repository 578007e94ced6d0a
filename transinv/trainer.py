"""The one training loop of transinv: pretrain on set A under a regime (or start vanilla or from
ImageNet weights), swap in a new head, finetune on set B at one location, and evaluate on a
schedule, handing every evaluation to an `on_eval(evaluation, state)` callback.

The loop knows neither Ray nor MLflow: callers track and checkpoint from the callback
(`state.checkpoint()`), and resume by passing that checkpoint back to `run_trial`. A resumed trial
continues the same curve: on the CPU its losses equal an uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from transinv import metrics
from transinv.canvas import CanvasStream, Renderer
from transinv.config import TrialConfig, data_root, to_flat, validate
from transinv.evaluation import (
    TestGrid,
    accuracy_at,
    balanced_subset,
    build_grid,
    evaluate_grid,
    positional_consistency,
)
from transinv.models import (
    Net,
    build_model,
    load_imagenet_weights,
    parameter_groups,
    reinitialize,
    replace_head,
)
from transinv.pretrain_cache import PretrainCache, Pretrained
from transinv.regimes import Placement, parse_class_regimes, point_to_pixel
from transinv.sources import ItemSet, load_items

log = logging.getLogger("transinv")

PHASES = ("pretrain", "finetune")
CHECKPOINT_VERSION = 1
HEARTBEAT_S = 30.0
"""Seconds between progress lines while training between evaluations."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the phase and step."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the phase, the step within it (0 = before its first update), scalar
    metrics under the keys of `metrics.py`, and arrays for heatmaps ([Gy, Gx] grids)."""

    phase: str
    step: int
    metrics: dict[str, float]
    grids: dict[str, np.ndarray] = field(default_factory=dict)
    final: bool = False
    """The last evaluation of its phase."""


@dataclass(frozen=True)
class TrialResult:
    """Final finetuning metrics plus forgetting summaries, and the trial's descriptive info
    (stop reasons, steps run, test grid, normalisation)."""

    metrics: dict[str, float]
    info: dict[str, Any]
    curves: dict[str, dict[int, float]]
    grid: TestGrid


# ---------------------------------------------------------------------------------------------
# Setup: everything that follows from the config alone (not part of a checkpoint).


def select_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible (Ray hides GPUs from trials that asked for none)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible to this process")
    return torch.device(name)


def configure_threads(threads: int) -> int:
    """Intra-op threads: the configured number, else the CPUs this process may run on (a Ray
    trial's CPU share, a container's quota)."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


@dataclass
class PhaseData:
    """A phase's item set, its training stream and its fixed evaluation items."""

    items: ItemSet
    stream: CanvasStream
    render: Renderer
    eval_items: torch.Tensor
    eval_labels: torch.Tensor
    eval_centres: torch.Tensor | None = None
    """Fixed centres of the evaluation items (pretraining: drawn from its regime)."""


@dataclass
class Setup:
    config: TrialConfig
    device: torch.device
    pretrain: PhaseData | None
    finetune: PhaseData
    grid: TestGrid
    threads: int


def _items(config: TrialConfig, name: str, classes: int) -> ItemSet:
    return load_items(
        name,
        classes,
        config.canvas.item_size,
        config.data.seed,
        data_root(config),
        config.data.download,
        config.canvas.size,
    )


def _placement(config: TrialConfig, items: ItemSet, phase: str) -> Placement:
    if phase == "pretrain":
        location, translation = config.pretrain.location, config.pretrain.translation
    else:
        location, translation = config.finetune.location, 0.0
    return Placement(
        size=config.canvas.size,
        item_size=config.canvas.item_size,
        num_classes=items.num_classes,
        num_items=len(items.train),
        location=location,
        translation=translation,
        pin_seed=config.data.seed,
    )


def _phase_data(config: TrialConfig, phase: str, device: torch.device) -> PhaseData:
    c = config.canvas
    if phase == "pretrain":
        items = _items(config, config.pretrain.dataset, config.pretrain.classes)
        regime, class_regimes = (
            config.pretrain.regime,
            parse_class_regimes(config.pretrain.class_regimes),
        )
        n_eval = config.eval.pretrain_items
    else:
        items = _items(config, config.finetune.dataset, config.finetune.classes)
        regime, class_regimes = "location", {}
        n_eval = config.eval.items
    placement = _placement(config, items, phase)
    render = Renderer.for_items(items, c.size, c.channels, c.normalize)
    # Distinct, fixed stream seeds per phase: the training seed varies the order, the phase
    # keeps pretraining and finetuning draws apart.
    stream = CanvasStream.build(
        items,
        regime,
        placement,
        render,
        seed=config.seed * 1000 + PHASES.index(phase),
        class_regimes=class_regimes,
        device=device,
    )
    subset = balanced_subset(items.test_labels, n_eval)
    eval_items, eval_labels = items.test[subset], items.test_labels[subset]
    centres = None
    if phase == "pretrain":
        # Held-out items go where training items of their class went: for exemplar-pinned
        # regimes, at the pin of a training exemplar of the same class.
        gen = torch.Generator().manual_seed(config.data.seed + 7919)
        starts, counts = items.class_slices()
        u = torch.rand(len(eval_labels), generator=gen, dtype=torch.float64)
        proxy = starts[eval_labels] + (u * counts[eval_labels]).floor().long()
        centres = stream.sampler(eval_labels, proxy, gen)
    return PhaseData(items, stream, render, eval_items, eval_labels, centres)


def build_setup(config: TrialConfig, device: torch.device, threads: int) -> Setup:
    pretrain = None
    if config.pretrain.dataset not in ("none", "imagenet"):
        pretrain = _phase_data(config, "pretrain", device)
    finetune = _phase_data(config, "finetune", device)
    trained = point_to_pixel(config.finetune.location, config.canvas.size, config.canvas.item_size)
    # The stride is a property of the architecture; a throwaway build on the meta device costs
    # nothing.
    with torch.device("meta"):
        stride = build_model(config.model.arch, 2, config.canvas.channels, config.canvas.size)
    grid = build_grid(
        config.canvas.size,
        config.canvas.item_size,
        config.eval.grid_step,
        config.eval.grid_offset,
        trained,
        stride.total_stride,
    )
    return Setup(config, device, pretrain, finetune, grid, threads)


# ---------------------------------------------------------------------------------------------
# Mutable training state: what a checkpoint holds.


@dataclass
class StopRule:
    """The authors' rule: stop once running train accuracy (over `window` steps) has stayed
    above `goal` for `patience` consecutive steps, or the running loss has not improved for
    `patience` steps. The step cap is the phase's step count."""

    goal: float
    window: int
    patience: int
    accs: deque = field(default_factory=deque)
    losses: deque = field(default_factory=deque)
    above: int = 0
    best_loss: float = math.inf
    since_best: int = 0

    def update(self, loss: float, acc: float) -> str | None:
        """Record one step; the reason to stop, if any."""
        for buf, v in ((self.accs, acc), (self.losses, loss)):
            buf.append(v)
            if len(buf) > self.window:
                buf.popleft()
        if len(self.accs) < self.window:
            return None
        running_acc = sum(self.accs) / len(self.accs)
        running_loss = sum(self.losses) / len(self.losses)
        self.above = self.above + 1 if running_acc > self.goal else 0
        if running_loss < self.best_loss - 1e-4:
            self.best_loss, self.since_best = running_loss, 0
        else:
            self.since_best += 1
        if self.above >= self.patience:
            return "goal"
        if self.since_best >= self.patience:
            return "stagnation"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "accs": list(self.accs),
            "losses": list(self.losses),
            "above": self.above,
            "best_loss": self.best_loss,
            "since_best": self.since_best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accs, self.losses = deque(state["accs"]), deque(state["losses"])
        self.above, self.best_loss = state["above"], state["best_loss"]
        self.since_best = state["since_best"]


@dataclass
class TrainState:
    """Where a trial is: phase, step, model, optimiser, stop rule, running sums since the last
    evaluation, the curves needed for forgetting summaries, and (through `setup`) the data
    streams' positions."""

    setup: Setup
    net: Net
    phase: str
    step: int = 0
    evaluated: bool = False
    """Whether the evaluation at (phase, step) has been emitted (so a resume does not repeat it)."""
    optimizer: torch.optim.Optimizer | None = None
    pretrain_head: nn.Module | None = None
    stop: StopRule | None = None
    stop_reason: dict[str, str] = field(default_factory=dict)
    steps_run: dict[str, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    acc_sum: float = 0.0
    count: int = 0
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    """The latest finetuning evaluation's metrics (the trial's final metrics once it ends)."""
    pretrain_cache: str = "off"
    """`off`, `miss` (pretrained here and stored) or `hit` (loaded from the cache)."""

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue this trial exactly (a plain dict for `torch.save`)."""
        s = self.setup
        return {
            "version": CHECKPOINT_VERSION,
            "config": to_flat(s.config),
            "phase": self.phase,
            "step": self.step,
            "evaluated": self.evaluated,
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "pretrain_head": self.pretrain_head.state_dict() if self.pretrain_head else None,
            "stop": self.stop.state_dict() if self.stop else None,
            "stop_reason": dict(self.stop_reason),
            "steps_run": dict(self.steps_run),
            "running": (self.loss_sum, self.acc_sum, self.count),
            "curves": {k: dict(v) for k, v in self.curves.items()},
            "last_metrics": dict(self.last_metrics),
            "pretrain_cache": self.pretrain_cache,
            "streams": {
                phase: data.stream.state()
                for phase, data in (("pretrain", s.pretrain), ("finetune", s.finetune))
                if data is not None
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }


def _new_optimizer(net: Net, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)


def _stop_rule(config: TrialConfig, phase: str) -> StopRule | None:
    rule = config.pretrain.stop if phase == "pretrain" else config.finetune.stop
    if rule != "goal":
        return None
    return StopRule(config.stop.goal, config.stop.window, config.stop.patience)


def initial_state(setup: Setup) -> TrainState:
    c = setup.config
    first = "pretrain" if setup.pretrain is not None else "finetune"
    classes = (setup.pretrain or setup.finetune).items.num_classes
    net = build_model(c.model.arch, classes, c.canvas.channels, c.canvas.size)
    if c.pretrain.dataset == "imagenet":
        load_imagenet_weights(net, c.model.arch)
    net = net.to(setup.device, memory_format=torch.channels_last)
    state = TrainState(setup=setup, net=net, phase=first)
    if first == "pretrain":
        state.optimizer = _new_optimizer(net, c.optim.lr)
        state.stop = _stop_rule(c, "pretrain")
    else:
        begin_finetune(state)
    return state


def frozen_groups(freeze: str) -> tuple[str, ...]:
    return {"none": (), "conv": ("conv",), "fc": ("fc",), "all_but_head": ("conv", "fc")}[freeze]


def begin_finetune(state: TrainState) -> None:
    """New head for set B, partial transfer, freezing, fresh optimiser and stop rule."""
    c = state.setup.config
    net = state.net
    classes = state.setup.finetune.items.num_classes
    if state.setup.pretrain is not None:
        old = replace_head(net, classes)
        state.pretrain_head = old.requires_grad_(False)
    elif net.head.out_features != classes:  # ImageNet weights come with a 1000-way head
        replace_head(net, classes)
    if c.finetune.transfer == "scramble_fc":
        reinitialize(net.classifier)
    elif c.finetune.transfer == "scramble_conv":
        reinitialize(net.features)
    net.to(state.setup.device, memory_format=torch.channels_last)
    groups = parameter_groups(net)
    frozen = frozen_groups(c.finetune.freeze)
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name not in frozen)
    state.phase, state.step, state.evaluated = "finetune", 0, False
    state.optimizer = _new_optimizer(net, c.finetune.lr or c.optim.lr)
    state.stop = _stop_rule(c, "finetune")
    state.loss_sum = state.acc_sum = 0.0
    state.count = 0


def restore_state(setup: Setup, checkpoint: dict[str, Any]) -> TrainState:
    """The state a checkpoint describes, for the same config."""
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint version {checkpoint.get('version')} is not {CHECKPOINT_VERSION}"
        )
    if checkpoint["config"] != to_flat(setup.config):
        changed = sorted(
            k for k, v in to_flat(setup.config).items() if checkpoint["config"].get(k) != v
        )
        raise ValueError(f"checkpoint was made with another config (differs in {changed})")
    state = initial_state(setup)
    if checkpoint["phase"] in ("finetune", "done") and state.phase == "pretrain":
        # Rebuild the finetuning structure (new head, freezing) before loading its weights.
        begin_finetune(state)
    state.net.load_state_dict(checkpoint["net"])
    if checkpoint["pretrain_head"] is not None:
        state.pretrain_head.load_state_dict(checkpoint["pretrain_head"])
    if checkpoint["optimizer"] is not None:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["stop"] is not None:
        state.stop.load_state_dict(checkpoint["stop"])
    state.phase, state.step = checkpoint["phase"], checkpoint["step"]
    state.evaluated = checkpoint["evaluated"]
    state.stop_reason = dict(checkpoint["stop_reason"])
    state.steps_run = dict(checkpoint["steps_run"])
    state.loss_sum, state.acc_sum, state.count = checkpoint["running"]
    state.curves = {k: dict(v) for k, v in checkpoint["curves"].items()}
    state.last_metrics = dict(checkpoint["last_metrics"])
    state.pretrain_cache = checkpoint.get("pretrain_cache", "off")
    for phase, stream_state in checkpoint["streams"].items():
        getattr(setup, phase).stream.restore(stream_state)
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return state


# ---------------------------------------------------------------------------------------------
# Evaluation schedule and evaluations.


def eval_steps(config: TrialConfig, steps: int) -> set[int]:
    """Steps of a phase at which to evaluate: 0, the schedule, and the last step."""
    e = config.eval
    if e.schedule == "log" and steps > 1:
        points = np.geomspace(1, steps, e.points - 1)
        scheduled = {int(round(p)) for p in points}
    else:
        scheduled = set(range(0, steps + 1, e.every))
    return {0, steps} | scheduled


def _running(state: TrainState) -> tuple[float, float]:
    if state.count == 0:
        return math.nan, math.nan
    return state.loss_sum / state.count, state.acc_sum / state.count


def evaluate_pretrain(state: TrainState, final: bool) -> Evaluation:
    setup, data = state.setup, state.setup.pretrain
    loss, train_acc = _running(state)
    acc, _ = accuracy_at(
        state.net,
        data.eval_items,
        data.eval_labels,
        data.eval_centres,
        data.render,
        device=setup.device,
    )
    out = {
        metrics.PRETRAIN_LOSS: loss,
        metrics.PRETRAIN_TRAIN_ACC: train_acc,
        metrics.PRETRAIN_ACC: acc,
    }
    grids: dict[str, np.ndarray] = {}
    if final:
        # The pretraining set over the finetuning test grid: is the net invariant for its own
        # classes?
        result = evaluate_grid(
            state.net,
            data.eval_items[: setup.config.eval.items],
            data.eval_labels[: setup.config.eval.items],
            setup.grid,
            data.render,
            device=setup.device,
        )
        out[metrics.PRETRAIN_ACC_WHOLE] = float(result.acc.mean())
        grids[metrics.PRETRAIN_ACC_GRID] = result.acc
    return Evaluation("pretrain", state.step, out, grids, final)


def evaluate_finetune(state: TrainState, final: bool) -> Evaluation:
    setup, data, c = state.setup, state.setup.finetune, state.setup.config
    loss, train_acc = _running(state)
    layers = list(state.net.probe_layers)
    result = evaluate_grid(
        state.net,
        data.eval_items,
        data.eval_labels,
        setup.grid,
        data.render,
        layers,
        device=setup.device,
    )
    grid = setup.grid
    untrained = grid.untrained()
    out = {metrics.FINETUNE_LOSS: loss, metrics.FINETUNE_TRAIN_ACC: train_acc}
    out.update(
        metrics.grid_summary(
            result.acc,
            untrained,
            grid.aligned(),
            result.acc_trained,
            1.0 / data.items.num_classes,
        )
    )
    invariance, g_grids = metrics.invariance_summary(result.i_grids, result.d_grids, untrained)
    out.update(invariance)
    out[metrics.CONSISTENCY] = positional_consistency(
        state.net, data.eval_items, data.render, c.canvas.size, c.data.seed, setup.device
    )
    if state.pretrain_head is not None:
        pre = setup.pretrain
        out[metrics.FORGETTING_PRETRAIN_ACC], _ = accuracy_at(
            state.net,
            pre.eval_items,
            pre.eval_labels,
            pre.eval_centres,
            pre.render,
            head=state.pretrain_head,
            device=setup.device,
        )
    grids = {metrics.ACC_GRID: result.acc, **g_grids}
    return Evaluation("finetune", state.step, out, grids, final)


FORGETTING_CURVES = (metrics.ACC_UNTRAINED, metrics.ACC_TRAINED, metrics.FORGETTING_PRETRAIN_ACC)


def _record_curves(state: TrainState, evaluation: Evaluation) -> None:
    if evaluation.phase != "finetune":
        return
    state.last_metrics = dict(evaluation.metrics)
    for key, value in evaluation.metrics.items():
        if key in FORGETTING_CURVES or key.startswith("invariance/G/"):
            state.curves.setdefault(key, {})[evaluation.step] = float(value)


# ---------------------------------------------------------------------------------------------
# The loop.

OnEval = Callable[[Evaluation, TrainState], None]


def _train_step(state: TrainState, data: PhaseData, batch_size: int) -> tuple[float, float]:
    images, labels, _ = data.stream.next_batch(batch_size)
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


def _set_train_mode(state: TrainState) -> None:
    """Train mode, except frozen parts: their BatchNorm statistics must not drift either."""
    state.net.train()
    if state.phase == "finetune":
        frozen = frozen_groups(state.setup.config.finetune.freeze)
        parts = {"conv": state.net.features, "fc": state.net.classifier}
        for name in frozen:
            parts[name].eval()


def _emit(state: TrainState, evaluation: Evaluation, on_eval: OnEval | None, rate: float) -> None:
    _record_curves(state, evaluation)
    state.evaluated = True
    state.loss_sum = state.acc_sum = 0.0
    state.count = 0
    shown = {k: v for k, v in evaluation.metrics.items() if not k.startswith("invariance/")}
    text = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in shown.items())
    log.info("%s step %d: %s (%.1f steps/s)", evaluation.phase, evaluation.step, text, rate)
    if on_eval is not None:
        on_eval(evaluation, state)


def run_phase(state: TrainState, on_eval: OnEval | None) -> None:
    """Train the current phase from its current step to its end, evaluating on schedule."""
    setup, c = state.setup, state.setup.config
    phase = state.phase
    data = setup.pretrain if phase == "pretrain" else setup.finetune
    steps = c.pretrain.steps if phase == "pretrain" else c.finetune.steps
    schedule = eval_steps(c, steps)
    _set_train_mode(state)
    last_beat = started = time.monotonic()
    start_step = state.step
    reason = state.stop_reason.get(phase)
    while True:
        done = state.step >= steps or reason is not None
        if (state.step in schedule or done) and not state.evaluated:
            rate = (state.step - start_step) / max(time.monotonic() - started, 1e-9)
            if phase == "pretrain":
                evaluation = evaluate_pretrain(state, final=done)
            else:
                evaluation = evaluate_finetune(state, final=done)
            _emit(state, evaluation, on_eval, rate)
        if done:
            break
        loss, acc = _train_step(state, data, c.optim.batch_size)
        state.step += 1
        state.evaluated = False
        state.loss_sum += loss
        state.acc_sum += acc
        state.count += 1
        if state.stop is not None:
            reason = state.stop.update(loss, acc)
            if reason is not None:
                state.stop_reason[phase] = reason
        if time.monotonic() - last_beat > HEARTBEAT_S:
            last_beat = time.monotonic()
            log.info(
                "%s step %d/%d: loss=%.3f (%.1f steps/s)",
                phase,
                state.step,
                steps,
                state.loss_sum / state.count,
                (state.step - start_step) / (last_beat - started),
            )
    state.stop_reason.setdefault(phase, "steps")
    state.steps_run[phase] = state.step


def pretrain(state: TrainState, on_eval: OnEval | None, fresh: bool) -> None:
    """The pretraining phase, or its stored result when `run.pretrain_cache` holds it (then its
    evaluations are replayed through `on_eval`, so the trial's record is the same either way).
    A fresh pretraining is stored; one resumed from a checkpoint is not (its earlier
    evaluations are not at hand)."""
    c = state.setup.config
    cache = PretrainCache(c.run.pretrain_cache) if c.run.pretrain_cache else None
    stored = cache.load(c) if cache is not None and fresh else None
    if stored is not None:
        state.net.load_state_dict(stored.net)
        state.step = state.steps_run["pretrain"] = stored.steps_run
        state.stop_reason["pretrain"] = stored.stop_reason
        state.pretrain_cache = "hit"
        torch.set_rng_state(stored.rng)
        # A checkpoint taken during the replay says "pretraining done" (with the random state
        # finetuning starts from), never "at step 0 with pretrained weights".
        state.evaluated = True
        for evaluation in stored.evaluations:
            _emit(state, evaluation, on_eval, rate=0.0)
        return
    evaluations: list[Evaluation] = []

    def collect(evaluation: Evaluation, state: TrainState) -> None:
        evaluations.append(evaluation)
        if on_eval is not None:
            on_eval(evaluation, state)

    run_phase(state, collect)
    if cache is not None and fresh:
        net = {k: v.detach().cpu().clone() for k, v in state.net.state_dict().items()}
        pretrained = Pretrained(
            net,
            state.steps_run["pretrain"],
            state.stop_reason["pretrain"],
            torch.get_rng_state(),
            evaluations,
        )
        cache.save(c, pretrained)
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
    threads = configure_threads(config.run.threads)
    device = select_device(config.run.device)
    torch.manual_seed(config.seed)
    setup = build_setup(config, device, threads)
    state = restore_state(setup, checkpoint) if checkpoint else initial_state(setup)
    log.info(
        "trial on %s with %d threads: %s",
        device,
        threads,
        " ".join(f"{k}={v}" for k, v in _headline(config).items()),
    )
    if state.phase == "pretrain":
        pretrain(state, on_eval, fresh=checkpoint is None)
        begin_finetune(state)
    if state.phase == "finetune":
        run_phase(state, on_eval)
        state.phase = "done"
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
    return TrialResult(final, info, state.curves, setup.grid)


def _headline(config: TrialConfig) -> dict[str, Any]:
    flat = to_flat(config)
    keys = ("model.arch", "pretrain.dataset", "pretrain.regime", "finetune.dataset", "seed")
    return {k: flat[k] for k in keys}
