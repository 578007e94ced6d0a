"""The phases of a trial as data: pretraining (when there is one) and finetuning, each described
once from the config: its items and training stream, held-out items, steps, evaluation schedule,
stop rule, learning rate, head, transfer, freezing and evaluation. The trainer's one loop runs
any phase from its description without asking which phase it is.

The loop, the training state and checkpoints live in `trainer.py`; what an evaluation measures,
in `evaluation.py`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from transinv.canvas import CanvasStream, Renderer
from transinv.config import ConfigError, TrialConfig, data_root
from transinv.evaluation import (
    Evaluation,
    HeldOut,
    balanced_subset,
    evaluate_finetune,
    evaluate_pretrain,
)
from transinv.grid import TestGrid
from transinv.pretrain_cache import PretrainCache
from transinv.regimes import Placement, parse_class_regimes
from transinv.sources import ItemSet, load_items

FROZEN_PARTS = {"none": (), "conv": ("conv",), "fc": ("fc",), "all_but_head": ("conv", "fc")}
"""`finetune.freeze` -> the parts (`models.parameter_groups`) it freezes."""
SCRAMBLED_PARTS = {"all": (), "scramble_fc": ("fc",), "scramble_conv": ("conv",)}
"""`finetune.transfer` -> the parts whose transferred weights it re-initialises."""

Evaluate = Callable[[Any, Any, int, tuple[float, float], bool], Evaluation]
"""(net, previous phase's head or None, step, running (loss, train acc), final) -> Evaluation."""


@dataclass(frozen=True)
class PhaseData:
    """A phase's item set, its training stream and its fixed held-out items."""

    items: ItemSet
    stream: CanvasStream
    held_out: HeldOut


@dataclass(frozen=True)
class Phase:
    name: str
    data: PhaseData
    steps: int
    """The step cap (and the number of steps under the `fixed` stop rule)."""
    schedule: frozenset[int]
    """Steps to evaluate at (the last evaluation also comes when the stop rule ends it early)."""
    stop: str
    """`fixed` or `goal` (`StopRule`)."""
    lr: float
    swap_head: bool
    """A new head for this phase's classes, the previous one kept to measure forgetting."""
    scrambled: tuple[str, ...]
    """Parts re-initialised on entering the phase (`finetune.transfer`)."""
    frozen: tuple[str, ...]
    evaluate: Evaluate
    records: bool
    """Its evaluations are the trial's final metrics and forgetting curves."""
    cache: PretrainCache | None = None
    """Where its result is stored and shared between trials (pretraining only: the key covers
    every config key that can change pretraining)."""


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

    STATE = ("accs", "losses", "above", "best_loss", "since_best")
    """The fields a checkpoint holds (deques as lists)."""

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
        return {k: _plain(getattr(self, k)) for k in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.STATE:
            setattr(self, k, deque(state[k]) if isinstance(getattr(self, k), deque) else state[k])


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, deque) else value


def stop_rule(config: TrialConfig, phase: Phase) -> StopRule | None:
    if phase.stop != "goal":
        return None
    return StopRule(config.stop.goal, config.stop.window, config.stop.patience)


def eval_steps(config: TrialConfig, steps: int) -> frozenset[int]:
    """Steps of a phase at which to evaluate: 0, the schedule, and the last step."""
    e = config.eval
    if e.schedule == "log" and steps > 1:
        points = np.geomspace(1, steps, e.points - 1)
        scheduled = {int(round(p)) for p in points}
    else:
        scheduled = set(range(0, steps + 1, e.every))
    return frozenset({0, steps} | scheduled)


def phase_data(
    config: TrialConfig,
    dataset: str,
    classes: int,
    regime: str,
    class_regimes: dict[int, str],
    location: tuple[float, float],
    translation: float,
    held_out: int,
    stream_seed: int,
    device: torch.device,
) -> PhaseData:
    c, seed = config.canvas, config.data.seed
    items = load_items(
        dataset, classes, c.item_size, seed, data_root(config), config.data.download, c.size
    )
    placement = Placement(
        size=c.size,
        item_size=c.item_size,
        num_classes=items.num_classes,
        num_items=len(items.train),
        location=location,
        translation=translation,
        pin_seed=seed,
    )
    render = Renderer.for_items(items, c.size, c.channels, c.normalize)
    stream = CanvasStream.build(
        items,
        regime,
        placement,
        render,
        seed=stream_seed,
        class_regimes=class_regimes,
        device=device,
    )
    subset = balanced_subset(items.test_labels, held_out)
    test, labels = items.test[subset], items.test_labels[subset]
    # Held-out items go where training items of their class went: for exemplar-pinned regimes,
    # at the pin of a training exemplar of the same class.
    gen = torch.Generator().manual_seed(seed + 7919)
    starts, counts = items.class_slices()
    u = torch.rand(len(labels), generator=gen, dtype=torch.float64)
    proxy = starts[labels] + (u * counts[labels]).floor().long()
    centres = stream.sampler(labels, proxy, gen)
    return PhaseData(items, stream, HeldOut(test, labels, centres, render, items.num_classes))


def build_phases(config: TrialConfig, grid: TestGrid, device: torch.device) -> dict[str, Phase]:
    """The trial's phases in order, by name: pretraining unless the net starts vanilla or from
    ImageNet weights, then finetuning."""
    c, p, f = config, config.pretrain, config.finetune
    # Distinct, fixed stream seeds per phase: the training seed varies the order, the phase
    # keeps pretraining and finetuning draws apart.
    phases: dict[str, Phase] = {}
    if p.dataset not in ("none", "imagenet"):
        data = phase_data(
            c,
            p.dataset,
            p.classes,
            p.regime,
            parse_class_regimes(p.class_regimes),
            p.location,
            p.translation,
            c.eval.pretrain_items,
            c.seed * 1000,
            device,
        )
        phases["pretrain"] = Phase(
            name="pretrain",
            data=data,
            steps=p.steps,
            schedule=eval_steps(c, p.steps),
            stop=p.stop,
            lr=c.optim.lr,
            swap_head=False,
            scrambled=(),
            frozen=(),
            evaluate=partial(
                evaluate_pretrain,
                held_out=data.held_out,
                grid=grid,
                grid_items=c.eval.items,
                device=device,
            ),
            records=False,
            cache=PretrainCache(c.run.pretrain_cache) if c.run.pretrain_cache else None,
        )
    before = phases.get("pretrain")
    data = phase_data(
        c,
        f.dataset,
        f.classes,
        "location",
        {},
        f.location,
        0.0,
        c.eval.items,
        c.seed * 1000 + 1,
        device,
    )
    held_classes = len(data.held_out.labels.unique())
    if c.eval.nway > held_classes:
        raise ConfigError(
            f"bad value {c.eval.nway!r} for 'eval.nway': N-way matching needs N classes among "
            f"the held-out finetuning items, which have {held_classes} ({f.dataset}, "
            f"eval.items={c.eval.items})"
        )
    phases["finetune"] = Phase(
        name="finetune",
        data=data,
        steps=f.steps,
        schedule=eval_steps(c, f.steps),
        stop=f.stop,
        lr=f.lr or c.optim.lr,
        swap_head=before is not None,
        scrambled=SCRAMBLED_PARTS[f.transfer],
        frozen=FROZEN_PARTS[f.freeze],
        evaluate=partial(
            evaluate_finetune,
            held_out=data.held_out,
            grid=grid,
            seed=c.data.seed,
            device=device,
            forgetting=before.data.held_out if before else None,
            nway=c.eval.nway,
            shift_centres=c.eval.shift_centres,
        ),
        records=True,
    )
    return phases
