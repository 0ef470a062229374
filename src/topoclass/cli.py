"""Command line: parse, build the config, make one call per verb.

User errors (bad config, bad data, unusable checkpoints) print one line and
exit with code 2; a training run stopped by a signal exits with 75 and can be
resumed; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from topoclass import __version__
from topoclass.config import Config, load_config, parse_override
from topoclass.errors import TopoclassError

EXIT_USER_ERROR = 2

# Common options of `train` and `baseline`, as (flag, dotted config key, type, help).
_CONFIG_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--dataset", "data.dataset", str, "tang2019, tqc2020, jarvis or table"),
    ("--data-dir", "data.data_dir", str, "folder holding the datasets (or env TOPOCLASS_DATA_DIR)"),
    ("--table", "data.table", str, "your own CSV/TSV/JSONL table (with --dataset table)"),
    ("--cache-dir", "data.cache_dir", str, "featurization cache (or env TOPOCLASS_CACHE_DIR)"),
    ("--run-dir", "run_dir", str, "run directory (default runs/<dataset>)"),
    ("--epochs", "train.epochs", int, "number of epochs"),
    ("--batch-size", "train.batch_size", int, "mini-batch size"),
    ("--lr", "train.lr", float, "peak learning rate"),
    ("--seed", "train.seed", int, "random seed"),
    ("--device", "train.device", str, "auto, cpu, cuda, cuda:1 ..."),
]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file (defaults for everything else)")
    for flag, _, kind, text in _CONFIG_OPTIONS:
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--use-structure", action="store_true", default=None, help="use crystal structures")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set model.hidden_dim=256 (repeatable)",
    )


def _config_from_args(args: argparse.Namespace) -> Config:
    overrides = dict(parse_override(text) for text in args.overrides)
    for flag, key, _, _ in _CONFIG_OPTIONS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    if args.use_structure:
        overrides["data.use_structure"] = True
    if getattr(args, "resume", None) is not None:
        overrides["checkpoint.resume"] = args.resume
    return load_config(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from topoclass.train.run import run_training

    return run_training(_config_from_args(args))


def _cmd_resume(args: argparse.Namespace) -> int:
    from topoclass.train.run import run_training

    config = load_config(args.run / "config.yaml", {"checkpoint.resume": "auto", "run_dir": str(args.run)})
    return run_training(config)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from topoclass.evaluation.evaluate import evaluate_run

    _, table = evaluate_run(args.run, with_baseline=not args.no_baseline, split_name=args.split)
    print(table)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from topoclass.evaluation.evaluate import run_baseline

    _, table = run_baseline(_config_from_args(args))
    print(table)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from topoclass.data.records import Material
    from topoclass.evaluation.predict import (
        load_run,
        predict,
        prediction_features,
        rows_to_csv,
        table_materials,
    )

    run = load_run(args.run)
    if args.table is not None:
        materials = table_materials(args.table)
    elif args.formula is not None and args.spacegroup is not None:
        materials = [
            Material(id=args.formula, formula=args.formula, spacegroup=args.spacegroup, source="--formula")
        ]
    else:
        raise TopoclassError("predict needs --formula and --spacegroup, or --table")
    text = rows_to_csv(predict(run, prediction_features(materials, run)))
    if args.output is not None:
        args.output.write_text(text)
        print(f"Predictions for {len(materials)} materials written to {args.output}")
    else:
        print(text, end="")
    return 0


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from topoclass.checkpoint import catalog

    if args.action == "list":
        for info in catalog.list_checkpoints(_checkpoint_dir(args.path)):
            print(catalog.format_info(info))
        return 0
    if args.action == "verify":
        infos = catalog.verify_checkpoints(_checkpoint_dir(args.path))
        for info in infos:
            print(catalog.format_info(info))
        return 0 if all(info.verified for info in infos) else 1
    if args.action == "inspect":
        print(json.dumps(catalog.inspect_checkpoint(args.path), indent=2, default=str))
        return 0
    has_average = "averaged_model" in catalog.inspect_checkpoint(args.path).get("state_keys", [])
    catalog.export_weights(args.path, args.output, key="averaged_model" if has_average else "model")
    print(f"Model weights written to {args.output}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from topoclass.config import DataConfig
    from topoclass.data.cache import list_entries, remove_entry

    root = DataConfig(cache_dir=args.cache_dir).resolved_cache_dir()
    entries = list_entries(root)
    if args.action == "list":
        for entry in entries:
            state = "" if entry.complete else "  (unfinished write)"
            print(
                f"{entry.path.name}  {entry.size_bytes / 1e6:8.1f} MB  idle {entry.idle_days:6.1f} d{state}"
            )
        print(f"{len(entries)} entries, {sum(e.size_bytes for e in entries) / 1e6:.1f} MB in {root}")
        return 0
    # A write still in progress is young; one older than a day was left by a crash.
    stale = [e for e in entries if e.idle_days > (args.older_than if e.complete else 1.0)]
    verb = "would remove" if args.dry_run else "removed"
    for entry in stale:
        if not args.dry_run:
            remove_entry(entry)
        print(f"{verb} {entry.path.name} ({entry.size_bytes / 1e6:.1f} MB)")
    freed = sum(e.size_bytes for e in stale) / 1e6
    print(f"{len(stale)} entries, {freed:.1f} MB {'to free' if args.dry_run else 'freed'} in {root}")
    return 0


def _checkpoint_dir(path: Path) -> Path:
    """A run directory or a checkpoint directory, as the user prefers to name it."""
    return path / "checkpoints" if (path / "config.yaml").exists() else path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topoclass",
        description="Multitask classifiers of topological materials; training that never loses progress.",
    )
    parser.add_argument("--version", action="version", version=f"topoclass {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train (or resume) a model")
    _add_config_options(train)
    train.add_argument(
        "--resume",
        metavar="auto|ask|never|PATH",
        help="resume from the latest checkpoint (auto), ask first (default on a terminal), start over "
        "(never; the old run is moved aside), or resume from a given checkpoint",
    )
    train.set_defaults(func=_cmd_train)

    resume = verbs.add_parser("resume", help="resume a stopped run with its saved config")
    resume.add_argument("run", type=Path)
    resume.set_defaults(func=_cmd_resume)

    evaluate = verbs.add_parser("evaluate", help="test-split metrics and figures of a run")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the gradient-boosting baseline")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.set_defaults(func=_cmd_evaluate)

    baseline = verbs.add_parser("baseline", help="gradient-boosted trees on the same features and split")
    _add_config_options(baseline)
    baseline.set_defaults(func=_cmd_baseline)

    predict = verbs.add_parser("predict", help="class probabilities for new materials")
    predict.add_argument("run", type=Path)
    predict.add_argument("--formula")
    predict.add_argument("--spacegroup", type=int)
    predict.add_argument("--table", type=Path, help="CSV/TSV/JSONL with formula and spacegroup columns")
    predict.add_argument("--output", "-o", type=Path, help="CSV file (default: standard output)")
    predict.set_defaults(func=_cmd_predict)

    checkpoints = verbs.add_parser("checkpoints", help="list, verify, inspect or export checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "checkpoints of a run"),
        ("verify", "verify every checkpoint (exit 1 if any is bad)"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("path", type=Path, help="run directory or checkpoint directory")
    inspect = actions.add_parser("inspect", help="config and history summary of one checkpoint")
    inspect.add_argument("path", type=Path)
    export = actions.add_parser("export", help="write the model weights alone as safetensors")
    export.add_argument("path", type=Path)
    export.add_argument("output", type=Path)
    checkpoints.set_defaults(func=_cmd_checkpoints)

    cache = verbs.add_parser("cache", help="list or prune the featurization cache")
    cache_actions = cache.add_subparsers(dest="action", required=True)
    cache_actions.add_parser("list", help="entries with size and days since last use")
    prune = cache_actions.add_parser("prune", help="remove entries unused for a while (rebuilt when needed)")
    prune.add_argument(
        "--older-than", type=float, default=30.0, metavar="DAYS", help="idle days (default 30)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    for sub in cache_actions.choices.values():
        sub.add_argument(
            "--cache-dir", type=Path, help="cache root (default: env TOPOCLASS_CACHE_DIR or ~/.cache)"
        )
    cache.set_defaults(func=_cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Progress goes to stdout, except for verbs whose stdout is data (predictions as CSV).
    stream = sys.stderr if args.verb == "predict" else sys.stdout
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=stream
    )
    try:
        return args.func(args)
    except TopoclassError as exc:
        print(f"topoclass: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("topoclass: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
