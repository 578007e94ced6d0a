"""Run one trial (pretrain -> finetune -> final evaluation) in this process, without Ray or MLflow.

    python -m transinv                                  # small preset, 3000 + 1000 steps: ~5 min
    python -m transinv model.arch=small_cnn pretrain.dataset=none finetune.steps=300
    python -m transinv --keys                           # every key: type, default, domain, doc
    python -m transinv --list                           # every registry entry with its facts
    python -m transinv pretrain.steps=200 finetune.steps=100 --json out.json

Progress goes to stderr; the final metrics go to stdout (and to --json PATH).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence

from transinv.choices import REGISTRIES, first_sentence
from transinv.config import ConfigError, describe, format_value, from_flat, parse_overrides


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def print_keys() -> None:
    for key, kind, default, domain, doc in describe():
        print(f"{key:24s} {kind:5s} {default or '(empty)':12s} {domain}")
        print(f"{'':24s} {doc}")


def print_registries() -> None:
    """One line per entry: registry kind, name, facts, first line of its docstring."""
    rows = [
        (
            r.kind,
            e.name,
            " ".join(f"{k}={format_value(v) or '-'}" for k, v in e.facts.items()),
            e.doc,
        )
        for r in REGISTRIES
        for e in r.entries()
    ]
    # Analyses are named in study files (`report:`), not config keys; their registry needs
    # pandas and matplotlib, so it is read only here.
    from transinv.analyses import ANALYSES

    rows += [("analysis", name, "", first_sentence(fn.__doc__)) for name, fn in ANALYSES.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(f"{cell:{w}s}" for cell, w in zip(row, widths, strict=False)), row[3])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transinv",
        description="Run one transinv trial: pretrain, finetune at one location, evaluate.",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--json", metavar="PATH", help="write final metrics and info as JSON")
    parser.add_argument("--keys", action="store_true", help="list config keys and exit")
    parser.add_argument(
        "--list", action="store_true", help="list every registry (architectures, ...) and exit"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    if args.keys:
        print_keys()
        return 0
    if args.list:
        print_registries()
        return 0
    try:
        config = from_flat(parse_overrides(args.overrides), source="command line")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Imported here so config errors answer without loading the trainer.
    from transinv.trainer import run_trial

    try:
        result = run_trial(config)
    except (ConfigError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(map(len, result.metrics), default=0)
    for key, value in sorted(result.metrics.items()):
        print(f"{key:{width}s}  {value:.4f}")
    for key, value in result.info.items():
        print(f"{key:{width}s}  {format_value(value)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "metrics": {k: _jsonable(v) for k, v in result.metrics.items()},
                    "info": {k: _jsonable(v) for k, v in result.info.items()},
                },
                f,
                indent=2,
                sort_keys=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
