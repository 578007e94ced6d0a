"""Benchmark: batched canvas generation against a per-item PIL pipeline.

Two ways to make the same training batch (the default preset's pretraining stream: glyphs,
regime `whole`, 64 px canvas, 16 px items, batch 64, 1 channel, normalised):

  library  `CanvasStream.next_batch(64)`: draws classes, exemplars and centres, then pastes the
           whole batch with one indexed assignment on tensors. The stream's generator is reset
           before every call, so each call makes exactly the batch the PIL pipeline makes (the
           reset is timed with it).
  PIL      what a torchvision-style dataset does per sample, as in the authors' framework: the
           item as a PIL image, `Image.resize((k, k), BILINEAR)`, pasted on a black
           `Image.new("L", (S, S))` at (x - h, y - h), `to_tensor`, `normalize`, then
           `torch.stack` of the batch (and `.to(device)`). It gets the items as PIL uint8 images
           made beforehand (a dataset holds them so) and the batch's item indices and centres
           as Python lists for free: it is not charged for drawing them, the library is.

Both are fed the same items at the same centres: the library makes the batch, and which item went
where is read back from its canvases (the item under each returned centre is matched to the
training set), so the baseline does not reimplement the library's sampling. Before timing, the
two batches are checked equal up to the uint8 rounding of the PIL images (half a grey level).

The contenders alternate in rounds (who goes first alternates too), each round calling each one
for about `--round-s` seconds; the medians of the per-batch times give the ratio, so machine
noise hits both alike. A third line times the library's paste alone (`Renderer`, no drawing).
The PIL pipeline runs on one thread whatever `--threads` says; the library uses the threads. When
other processes keep the same cores busy, the library's small two-thread ops stall on descheduled
workers (measured: 0.3 ms a batch became 1-40 ms), while on one thread they do not: compare
`--threads 1` before reading a low ratio as slow pasting.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_canvas.py          # ~25 s on 2 idle CPU cores, more if busy
    .venv/bin/python benchmarks/bench_canvas.py --quick  # ~6 s, a smoke check
The last line is `bench_canvas: <PIL time / library time>x`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from transinv.canvas import CanvasStream
from transinv.config import from_flat
from transinv.trainer import build_setup, select_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    round_s: float,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one figure per round in which it is called for about
    `round_s` seconds; the contenders alternate within every round, and which goes first
    alternates between rounds."""
    for fn in contenders.values():  # warm up
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            fn, calls = contenders[name], 0
            sync(device)
            start = time.perf_counter()
            while time.perf_counter() - start < round_s:
                fn()
                calls += 1
            sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return times


def placed_items(stream: CanvasStream, images: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Indices [B] of the training items under each centre of a batch the stream made, found by
    matching each item-sized window of the canvases against the whole training set."""
    k = stream.train.shape[-1]
    h = k // 2
    r = stream.render
    windows = torch.stack(
        [images[b, 0, y - h : y - h + k, x - h : x - h + k] for b, (x, y) in enumerate(centres)]
    )
    windows = windows.cpu() * r.std + r.mean  # back to pixels in [0, 1]
    train = stream.train.cpu()
    distance = torch.cdist(windows.flatten(1), train.flatten(1))  # [B, N]
    best = distance.min(1)
    if float(best.values.max()) > 1e-4:
        raise AssertionError("a window of the library's canvas matches no training item")
    return best.indices


def pil_batch(
    pil_items: list[Image.Image],
    index: list[int],
    centres: list[tuple[int, int]],
    size: int,
    mean: float,
    std: float,
    device: torch.device,
) -> torch.Tensor:
    """The per-sample pipeline: [B, 1, S, S] normalised canvases on `device`."""
    out = []
    for i, (x, y) in zip(index, centres, strict=True):
        item = pil_items[i]
        k = item.size[0]
        h = k // 2
        item = item.resize((k, k), Image.BILINEAR)
        canvas = Image.new("L", (size, size))
        canvas.paste(item, (x - h, y - h))
        out.append(TF.normalize(TF.to_tensor(canvas), [mean], [std]))
    return torch.stack(out).to(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--round-s", type=float, default=0.2, help="seconds per contender/round")
    parser.add_argument("--quick", action="store_true", help="3 short rounds: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.round_s = 3, 0.05

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    config = from_flat({"run.device": args.device, "run.threads": args.threads})
    setup = build_setup(config, device, args.threads)
    stream = setup.phases["pretrain"].data.stream
    render = stream.render
    k = stream.train.shape[-1]

    # One batch, made by the library; the baseline gets the same items at the same centres.
    start_state = stream.state()
    images, _, centres = stream.next_batch(args.batch)
    index = placed_items(stream, images, centres)
    pil_items = [
        Image.fromarray(np.asarray((item * 255).round().to(torch.uint8)))
        for item in stream.train.cpu()
    ]
    index_list, centre_list = index.tolist(), [tuple(c) for c in centres.tolist()]

    def library() -> torch.Tensor:
        stream.restore(start_state)
        return stream.next_batch(args.batch)[0]

    def paste_only() -> torch.Tensor:
        return render(stream.train[index.to(device)], centres.to(device))

    def pil() -> torch.Tensor:
        return pil_batch(
            pil_items, index_list, centre_list, render.size, render.mean, render.std, device
        )

    # Same canvases up to the PIL images' uint8 rounding (at most half a grey level).
    reference = library()
    diff = {
        name: float((fn() - reference).abs().max()) * render.std
        for name, fn in (("paste_only", paste_only), ("pil", pil))
    }
    for name, d in diff.items():
        if d > 0.5 / 255 + 1e-6:
            raise AssertionError(f"{name} canvases differ from the library's by {d:.4g} (pixels)")

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads "
        f"(CPUs available: {len(os.sched_getaffinity(0))}, load average "
        f"{os.getloadavg()[0]:.2f})"
    )
    print(
        f"setup: {setup.config.pretrain.dataset}, regime {setup.config.pretrain.regime}, "
        f"canvas {render.size} px, items {k} px ({len(stream.train)} training items), "
        f"batch {args.batch}, {render.channels} channel, normalised "
        f"(mean {render.mean:.4f}, std {render.std:.4f})"
    )
    print(
        f"checked: max |library - PIL| = {diff['pil']:.2e} (pixel units; uint8 rounding bound "
        f"{0.5 / 255:.2e}), max |library - paste only| = {diff['paste_only']:.2e}"
    )
    print(f"{args.rounds} rounds, ~{args.round_s} s per contender per round, alternating")

    times = side_by_side(
        {"library": library, "paste_only": paste_only, "pil": pil},
        args.rounds,
        args.round_s,
        device,
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    labels = {
        "library": "CanvasStream.next_batch (draw + paste)",
        "paste_only": "Renderer alone (paste, no drawing)",
        "pil": "per-item PIL pipeline",
    }
    for name, label in labels.items():
        t = times[name]
        print(
            f"  {label:40s} median {median[name] * 1e3:8.3f} ms/batch "
            f"(min {min(t) * 1e3:.3f}, max {max(t) * 1e3:.3f}), "
            f"{args.batch / median[name]:10.0f} canvases/s"
        )
    print(f"PIL / paste alone: {median['pil'] / median['paste_only']:.1f}x")
    print(f"bench_canvas: {median['pil'] / median['library']:.1f}x")


if __name__ == "__main__":
    main()
