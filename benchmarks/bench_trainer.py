"""Benchmark: the trainer's step throughput against a bare PyTorch loop.

All contenders train the default preset's pretraining phase (small_cnn, glyphs, regime `whole`,
64 px canvas, 16 px items, batch 64, Adam lr 1e-3, channels_last), each its own model:

  trainer          `transinv.trainer.run_phase` itself, the real loop: `_train_step` (canvases
                   made on the fly by `CanvasStream.next_batch`, the non-finite-loss check,
                   `loss.item()` and the accuracy), the running sums, the stop rule and the
                   heartbeat. Its scheduled evaluations (step 0 and the last step) are swapped
                   for a stub for the duration, so nothing is evaluated and nothing is
                   subtracted from the time.
  bare, on the fly the plain loop, drawing its batches from an identical `CanvasStream`:
                   next_batch, channels_last, forward, cross_entropy, zero_grad, backward, step.
  bare, precomputed the plain loop over batches made beforehand into a list (already
                   channels_last): no canvas generation in the timed loop at all.

Why not time `run_trial` with a sparse schedule: it would still evaluate at the start and end of
both phases, and one finetuning evaluation (every test item at every grid centre, all probe
layers) costs as much as over 100 training steps here, so the figure would be mostly evaluation,
which `bench_eval.py` measures on its own. Setup (loading items, building the net) happens once
per trial and is not per-step cost either.

The headline (last line) is trainer / bare-on-the-fly steps/s: both make the same canvases the
same way, so the ratio is the loop's own overhead. Trainer / bare-precomputed is printed too; it
also charges the trainer for making its canvases, which the precomputed loop gets for free.

Contenders alternate in rounds of `--steps` steps (who goes first alternates too); the medians
of the per-round steps/s give the ratios, so machine noise hits all alike. One intra-op thread by
default (`--threads 1`): a trial in a study runs on one core (its Ray CPU share).

Run (from the repository root):
    .venv/bin/python benchmarks/bench_trainer.py          # ~60 s on an idle CPU core, more if busy
    .venv/bin/python benchmarks/bench_trainer.py --quick  # ~8 s, a smoke check
The last line is `bench_trainer: <trainer steps/s / bare on-the-fly steps/s>x`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from transinv.canvas import CanvasStream
from transinv.config import from_flat
from transinv.device import configure_threads, select_device
from transinv.models import build_model
from transinv.trainer import (
    Evaluation,
    TrainState,
    build_setup,
    initial_state,
    run_phase,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(
    contenders: dict[str, Callable[[int], None]],
    rounds: int,
    steps: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Steps per second of each contender, one figure per round of `steps` steps; contenders
    alternate within every round, and which goes first alternates between rounds."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            sync(device)
            start = time.perf_counter()
            contenders[name](steps)
            sync(device)
            rates[name].append(steps / (time.perf_counter() - start))
    return rates


def no_evaluation(net, previous_head, step: int, running, final: bool) -> Evaluation:
    """Stands in for the phase's evaluation while timing the loop."""
    return Evaluation("pretrain", step, {}, {}, final)


def trainer_rounds(state: TrainState) -> Callable[[int], None]:
    """`steps` more steps of the real pretraining loop per call."""
    phase = dataclasses.replace(state.setup.phases["pretrain"], evaluate=no_evaluation)
    phase_steps = phase.steps

    def run(steps: int) -> None:
        # run_phase trains from state.step to the phase's step count: start each round there.
        state.step = phase_steps - steps
        state.evaluated = True
        state.stop_reason.pop("pretrain", None)
        run_phase(state, phase, on_eval=None)

    return run


def bare_model(
    arch: str, classes: int, channels: int, size: int, lr: float, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = build_model(arch, classes, channels, size)
    net = net.to(device, memory_format=torch.channels_last).train()
    return net, torch.optim.Adam(net.parameters(), lr=lr)


def bare_on_the_fly(net, optimizer, stream: CanvasStream, batch: int) -> Callable[[int], None]:
    def run(steps: int) -> None:
        for _ in range(steps):
            images, labels, _ = stream.next_batch(batch)
            images = images.contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def bare_precomputed(
    net, optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[int], None]:
    """Each step takes the next batch of the list: no batch is seen twice while timing."""
    upcoming = iter(batches)

    def run(steps: int) -> None:
        for _ in range(steps):
            images, labels = next(upcoming)
            loss = nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: what a study trial has)"
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=6, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 steps: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 2, 1

    config = from_flat(
        {
            "run.device": args.device,
            "run.threads": args.threads,
            # Longer than any round; evaluations are stubbed out while timing in any case.
            "pretrain.steps": max(args.steps, 1000),
        }
    )
    threads = configure_threads(config.run.threads)
    device = select_device(config.run.device)
    torch.manual_seed(config.seed)
    setup = build_setup(config, device, threads)
    data = setup.phases["pretrain"].data
    batch = config.optim.batch_size
    state = initial_state(setup)  # the trainer's own net and optimiser

    c = config.canvas
    classes = data.items.num_classes
    # The bare loops draw from a copy of the trainer's stream (same items, regime, renderer and
    # seed) with a generator of its own.
    seed = torch.Generator().manual_seed(data.stream.generator.initial_seed())
    stream = dataclasses.replace(data.stream, generator=seed)
    lr = config.optim.lr
    net_fly, opt_fly = bare_model(config.model.arch, classes, c.channels, c.size, lr, device)
    net_pre, opt_pre = bare_model(config.model.arch, classes, c.channels, c.size, lr, device)
    batches = []
    for _ in range(args.warmup + args.rounds * args.steps):
        images, labels, _ = stream.next_batch(batch)
        batches.append((images.contiguous(memory_format=torch.channels_last), labels))

    contenders = {
        "trainer": trainer_rounds(state),
        "bare_fly": bare_on_the_fly(net_fly, opt_fly, stream, batch),
        "bare_pre": bare_precomputed(net_pre, opt_pre, batches),
    }
    for run in contenders.values():
        run(args.warmup)

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads "
        f"(CPUs available: {len(os.sched_getaffinity(0))}, load average "
        f"{os.getloadavg()[0]:.2f})"
    )
    print(
        f"setup: {config.model.arch}, {config.pretrain.dataset} ({classes} classes), regime "
        f"{config.pretrain.regime}, canvas {c.size} px, items {c.item_size} px, batch {batch}, "
        f"Adam lr {config.optim.lr:g}, channels_last"
    )
    print(
        f"{args.rounds} rounds of {args.steps} steps per contender, alternating "
        f"({args.warmup} warm-up steps each)"
    )
    print(
        "note: trainer and bare-on-the-fly make their canvases each step (next_batch); "
        f"bare-precomputed got them beforehand, {len(batches)} batches in a list"
    )
    rates = side_by_side(contenders, args.rounds, args.steps, device)
    median = {name: statistics.median(r) for name, r in rates.items()}
    labels = {
        "trainer": "trainer (run_phase, evaluations stubbed)",
        "bare_fly": "bare loop, batches on the fly",
        "bare_pre": "bare loop, batches precomputed",
    }
    for name, label in labels.items():
        r = rates[name]
        print(
            f"  {label:42s} median {median[name]:7.2f} steps/s "
            f"(min {min(r):.2f}, max {max(r):.2f}), {median[name] * batch:7.0f} img/s"
        )
    print(
        "trainer / bare precomputed (loop overhead + making canvases): "
        f"{median['trainer'] / median['bare_pre']:.3f}x"
    )
    print(
        "trainer / bare on the fly (loop overhead alone), the headline: "
        f"{median['trainer'] / median['bare_fly']:.3f}x"
    )
    print(f"bench_trainer: {median['trainer'] / median['bare_fly']:.3f}x")


if __name__ == "__main__":
    main()
