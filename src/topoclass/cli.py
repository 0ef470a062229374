"""Command line: parse, build the config, make one call per verb.

User errors (bad config, bad data, unusable checkpoints, places that cannot be
written) print one line and exit with code 2; a training run stopped by a
signal exits with 75 and can be resumed; a failed verification exits with 1;
anything else is a bug and keeps its traceback.
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
from topoclass.errors import EXIT_RESUMABLE, ResumableStop, TopoclassError
from topoclass.logs import configure_logging
from topoclass.serve.answers import DEFAULT_ROWS as DEFAULT_CACHED_ROWS
from topoclass.serve.limits import Limits
from topoclass.trainer.signals import StopRequested

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 1

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
_ACCEPT_HELP = "continue although the data changed since the run started (the change is logged)"


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
    from topoclass.app.training import run_training

    return run_training(_config_from_args(args), accept_data_change=args.accept_data_change)


def _cmd_resume(args: argparse.Namespace) -> int:
    from topoclass.app.runs import RunLayout
    from topoclass.app.training import run_training

    config = RunLayout.open(args.run).read_config()
    config.checkpoint.resume = "auto"
    return run_training(config, accept_data_change=args.accept_data_change)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from topoclass.app.evaluate import evaluate_run

    _, table = evaluate_run(
        args.run,
        with_baseline=not args.no_baseline,
        split_name=args.split,
        accept_data_change=args.accept_data_change,
    )
    print(table)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from topoclass.app.evaluate import run_baseline

    _, table = run_baseline(_config_from_args(args))
    print(table)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from topoclass.api import formula_inputs, load, structure_inputs, table_inputs
    from topoclass.files import atomic_write

    if (args.run is None) == (args.model is None):
        raise TopoclassError("predict needs a run directory or --model NAME (one of them)")
    one = args.formula is not None or args.spacegroup is not None
    given = [args.table is not None, one, bool(args.structure)]
    if sum(given) != 1:
        raise TopoclassError("predict takes one of: --formula with --spacegroup, --table, --structure")
    if one and (args.formula is None or args.spacegroup is None):
        raise TopoclassError("predict needs --formula and --spacegroup together")
    model = load(args.run or args.model)
    if args.table is not None:
        inputs = table_inputs(args.table)
    elif args.structure:
        inputs = structure_inputs(args.structure)
    else:
        inputs = formula_inputs(args.formula, args.spacegroup)
    table = model.answer(inputs, predictor=args.predictor)
    skipped = table.skipped
    for reason in skipped:
        logging.getLogger("topoclass.predict").warning("%s; skipped", reason)
    answered = len(table.rows) - len(skipped)
    if not answered:
        raise TopoclassError(f"no usable materials to predict ({len(skipped)} skipped)")
    text = table.answered_csv()
    if args.output is None:
        print(text, end="")
        return 0
    atomic_write(args.output, text)
    note = f" ({len(skipped)} skipped)" if skipped else ""
    print(f"Predictions for {answered} materials written to {args.output}{note}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from topoclass.serve.server import ServeSettings, run_server

    limits = Limits(max_body_bytes=args.max_body_bytes, max_rows=args.max_rows, max_atoms=args.max_atoms)
    settings = ServeSettings(
        tuple(args.models), limits, batching=not args.no_batching, cached_rows=args.cache_rows
    )
    return run_server(settings, host=args.host, port=args.port, workers=args.workers)


def _cmd_screen(args: argparse.Namespace) -> int:
    from topoclass.api import load

    model = load(args.model, device=args.device)
    try:
        model.screen(
            args.inputs,
            args.output,
            chunk_size=args.chunk_size,
            rank=[name for text in args.rank for name in text.split(",") if name] if args.rank else (),
            top=args.top,
            shard=args.shard,
            workers=args.workers,
            predictor=args.predictor,
            max_atoms=args.max_atoms,
            oversize_atoms=args.oversize_atoms,
        )
    finally:
        if model.last_screen is not None and model.last_screen.primary and not model.last_screen.stopped:
            print(model.last_screen.line())
    return 0


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from topoclass.app.runs import checkpoint_target
    from topoclass.checkpoint import catalog

    target = checkpoint_target(args.path)
    if args.action in ("list", "verify"):
        if target.checkpoint is not None:
            infos = [catalog.describe_checkpoint(target.checkpoint)]
        elif args.action == "list":
            infos = catalog.list_checkpoints(target.directory)
        else:
            infos = catalog.verify_checkpoints(target.directory)
        for info in infos:
            print(catalog.format_info(info))
        bad = [info for info in infos if not info.verified]
        if not infos:
            print(f"topoclass: no checkpoint in {target.directory}", file=sys.stderr)
        elif bad and args.action == "verify":
            print(f"topoclass: {len(bad)} of {len(infos)} checkpoints failed verification", file=sys.stderr)
        return EXIT_VERIFY_FAILED if args.action == "verify" and (bad or not infos) else 0
    path = target.single(prefer_best=True)
    if args.action == "inspect":
        print(json.dumps(catalog.inspect_checkpoint(path), indent=2, default=str))
        return 0
    which = catalog.export_weights(path, args.output)
    print(f"Model weights ({which}) of {path} written to {args.output}")
    return 0


def _cmd_slurm_template(args: argparse.Namespace) -> int:
    from topoclass.app.slurm import sbatch_script, screen_script

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if train_args[:1] == ["screen"]:
        screen_args = train_args[1:]
        screen_args = screen_args[1:] if screen_args[:1] == ["--"] else screen_args
        script = screen_script(
            shards=args.shards, cpus=args.cpus, time=args.time, lead=args.lead, screen_args=screen_args
        )
    else:
        script = sbatch_script(
            gpus=args.gpus, nodes=args.nodes, time=args.time, lead=args.lead, train_args=train_args
        )
    print(script, end="")
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
        "(never; the old run is moved aside), or continue from a given checkpoint (a checkpoint "
        "directory, best, latest, or a run), also into a new --run-dir",
    )
    train.add_argument("--accept-data-change", action="store_true", help=_ACCEPT_HELP)
    train.set_defaults(func=_cmd_train)

    resume = verbs.add_parser("resume", help="resume a stopped run with its saved config")
    resume.add_argument("run", type=Path)
    resume.add_argument("--accept-data-change", action="store_true", help=_ACCEPT_HELP)
    resume.set_defaults(func=_cmd_resume)

    evaluate = verbs.add_parser("evaluate", help="test-split metrics and figures of a run")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the gradient-boosting baseline")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--accept-data-change", action="store_true", help=_ACCEPT_HELP)
    evaluate.set_defaults(func=_cmd_evaluate)

    baseline = verbs.add_parser("baseline", help="gradient-boosted trees on the same features and split")
    _add_config_options(baseline)
    baseline.set_defaults(func=_cmd_baseline)

    predict = verbs.add_parser("predict", help="class probabilities for new materials")
    predict.add_argument("run", type=Path, nargs="?", help="a run directory (its best checkpoint)")
    predict.add_argument("--model", help="a bundled model (tang2019, tqc2020) or a run directory")
    predict.add_argument("--formula")
    predict.add_argument("--spacegroup", type=int)
    predict.add_argument("--table", type=Path, help="CSV/TSV/JSONL with formula and spacegroup columns")
    predict.add_argument(
        "--structure", type=Path, nargs="+", help="CIF, POSCAR, extxyz or pymatgen-JSON files"
    )
    predict.add_argument("--output", "-o", type=Path, help="CSV file (default: standard output)")
    predict.add_argument(
        "--predictor",
        choices=["network", "trees", "blend"],
        help="serve every task by this source (default: each task's choice on validation, see model_card.md)",
    )
    predict.set_defaults(func=_cmd_predict)

    serve = verbs.add_parser("serve", help="a web page and JSON API answering predictions (docs/serving.md)")
    serve.add_argument("models", nargs="+", metavar="MODEL", help="bundled models or run directories")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    defaults = Limits()
    for flag, default, text in (
        ("--max-body-bytes", defaults.max_body_bytes, "largest request body"),
        ("--max-rows", defaults.max_rows, "most formula rows or structure files in one request"),
        ("--max-atoms", defaults.max_atoms, "most atoms in one structure"),
    ):
        serve.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    serve.add_argument(
        "--no-batching",
        action="store_true",
        help="predict each request on its own in a thread pool instead of batching concurrent requests",
    )
    serve.add_argument(
        "--cache-rows",
        type=int,
        default=DEFAULT_CACHED_ROWS,
        help=f"formula answers kept for repeated requests (default {DEFAULT_CACHED_ROWS} a process; 0: none)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with the models loaded (default 1; docs/serving.md)",
    )
    serve.set_defaults(func=_cmd_serve)

    screen = verbs.add_parser(
        "screen", help="screen any number of crystals: resumable, sharded, Parquet out (docs/screening.md)"
    )
    screen.add_argument("model", help="a bundled model (tang2019, tqc2020) or a run directory")
    screen.add_argument(
        "inputs",
        nargs="+",
        help="folders or globs of CIF/POSCAR, extended XYZ, ASE .db, CSV/TSV/JSONL, pymatgen JSON dumps",
    )
    screen.add_argument("--output", "-o", type=Path, required=True, help="output folder (continued if begun)")
    screen.add_argument(
        "--rank", action="append", metavar="CLASS[,CLASS]", help="classes to rank, e.g. TI,TCI"
    )
    screen.add_argument("--top", type=int, default=100, help="candidates per ranked class (default 100)")
    screen.add_argument(
        "--chunk-size", type=int, default=1000, help="inputs per committed chunk (default 1000)"
    )
    screen.add_argument(
        "--shard", metavar="I/N", help="screen only shard I of N (Slurm arrays: $SLURM_ARRAY_TASK_ID/N)"
    )
    screen.add_argument("--workers", type=int, default=1, help="featurization processes (default 1)")
    screen.add_argument("--max-atoms", type=int, default=2000, help="skip larger cells (default 2000)")
    screen.add_argument(
        "--oversize-atoms",
        type=int,
        default=0,
        help="flag cells above this size (default: the largest training cell)",
    )
    screen.add_argument(
        "--predictor", choices=["network", "trees", "blend"], help="one source for every task"
    )
    screen.add_argument("--device", default="cpu", help="cpu (default), cuda, auto ...")
    screen.set_defaults(func=_cmd_screen)

    checkpoints = verbs.add_parser("checkpoints", help="list, verify, inspect or export checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    where = "a run, a checkpoint directory, one checkpoint, best, or latest"
    for name, text in (
        ("list", "checkpoints with epoch, step, size, time and verification (each file re-hashed)"),
        ("verify", "verify every checkpoint: exit 1 if any is bad or none is found"),
        ("inspect", "config and history summary of one checkpoint (a run's best by default)"),
        ("export", "write the model weights alone as safetensors (a run's best by default)"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("path", type=Path, help=where)
        if name == "export":
            sub.add_argument("output", type=Path, help="the .safetensors file to write")
    checkpoints.set_defaults(func=_cmd_checkpoints)

    slurm = verbs.add_parser(
        "slurm-template",
        help="print an sbatch script that checkpoints before its time limit and requeues itself",
    )
    slurm.add_argument("--gpus", type=int, default=1, help="GPUs per node (0: CPU only; default 1)")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    slurm.add_argument("--time", default="24:00:00", help="time limit per job (default 24:00:00)")
    slurm.add_argument(
        "--lead", type=int, default=300, help="seconds of warning before the limit (default 300)"
    )
    slurm.add_argument("--shards", type=int, default=10, help="screen: array tasks (default 10)")
    slurm.add_argument("--cpus", type=int, default=8, help="screen: CPUs per array task (default 8)")
    slurm.add_argument(
        "train_args",
        nargs=argparse.REMAINDER,
        help="-- then the arguments of topoclass train; or screen, then those of topoclass screen",
    )
    slurm.set_defaults(func=_cmd_slurm_template)

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
    configure_logging(logging.WARNING if args.quiet else logging.INFO, stream)
    try:
        return int(args.func(args))
    except (ResumableStop, StopRequested) as exc:
        print(f"topoclass: stopped: {exc}", file=sys.stderr)
        return EXIT_RESUMABLE
    except TopoclassError as exc:
        print(f"topoclass: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # The environment refused (permissions, a full disk, a missing folder): not a bug to trace.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"topoclass: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("topoclass: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
