"""`deepcluster` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from deepcluster.config import (
    CORE_SECTIONS,
    DEFAULT_METHOD,
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_section,
    config_from_dict,
    parse_set,
    read_yaml,
)
from deepcluster.config.flags import Flagged, add_common_flags, add_option_flags, given_flags, section_flags
from deepcluster.evaluate.options import EvalConfig
from deepcluster.methods import METHODS, MethodRegistry
from deepcluster.report.options import ReportOptions, parse_taps


def _flagged(methods: MethodRegistry) -> Iterator[Flagged]:
    """(section, field, info) of every option that has a command-line flag, core sections first."""
    for section, kind in {**CORE_SECTIONS, **methods.sections}.items():
        yield from section_flags(section, kind)


def _add_train_parser(commands: argparse._SubParsersAction, methods: MethodRegistry) -> None:
    p = commands.add_parser(
        "train",
        help="train a network by alternating clustering and classification",
        description="Train a method of the DeepCluster family, or any architecture on a run's labels (--labels). "
        "With no --data, runs on the embedded CIFAR-10 test split (10,000 images). Every setting can also be "
        "given with --set SECTION.OPTION=VALUE or in a --config YAML file.",
    )
    described = "; ".join(f"{m.name}: {m.summary}" if m.summary else m.name for m in methods)
    p.add_argument(
        "--method", help=f"{described} (default {DEFAULT_METHOD}; deepcluster with --preset paper)"
    )
    add_option_flags(p, _flagged(methods))
    p.add_argument("--preset", choices=sorted(PRESETS), help="named configuration to start from")
    p.add_argument("--config", help="YAML file with settings (a run's config.yaml reproduces it)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="set any option, e.g. --set optim.schedule=cosine (repeatable)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    add_common_flags(p, trust=True)


def build_train_config(args: argparse.Namespace, methods: MethodRegistry = METHODS) -> TrainConfig:
    """The method's starting settings, the preset, then --config file, then --set, then the named flags (later
    wins)."""
    given = given_flags(args, _flagged(methods))
    method = args.method or next((info.selects_method for *_, info, _ in given if info.selects_method), None)
    raw = read_yaml(args.config) if args.config else {}
    raw["preset"] = args.preset or raw.get("preset", "default")
    raw["method"] = method or raw.get("method")
    if raw["method"] is None:
        del raw["method"]
    config = config_from_dict(
        raw, methods, origin=f"--config {args.config}" if args.config else "command line"
    )
    config = apply_overrides(config, parse_set(args.set), origin="--set")
    flags: dict[str, Any] = {}
    for section, name, _, value in given:
        flags.setdefault(section, {})[name] = value
    return apply_overrides(config, flags, origin="command line")


def _resume_overrides(args: argparse.Namespace, methods: MethodRegistry) -> dict[str, Any]:
    """The `run` options a resume changes; ConfigError naming the given flags that it may not change."""
    given = given_flags(args, _flagged(methods))
    fixed = [info.flag for _, _, info, _ in given if not info.resumable]
    fixed += [f"--{name}" for name in ("config", "preset", "method", "set") if getattr(args, name)]
    if fixed:
        allowed = ", ".join(info.flag for _, _, info in _flagged(methods) if info.resumable)
        raise ConfigError(
            f"--resume: {', '.join(fixed)} cannot be changed when resuming; a resumed run keeps its config.yaml "
            f"(only {allowed} may change)"
        )
    for section, name, _, _ in given:
        assert section == "run", f"a resume changes options of the run section only, not {section}.{name}"
    return {name: value for _, name, _, value in given}


def _run_train(args: argparse.Namespace, methods: MethodRegistry) -> int:
    from deepcluster.api import resume, train

    if args.resume:
        result = resume(
            args.resume, trust_checkpoint=args.trust_checkpoint, **_resume_overrides(args, methods)
        )
    else:
        result = train(build_train_config(args, methods))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process reports for all
        return 0
    last = result.history[-1] if result.history else {}
    print(f"run directory: {result.run_dir}")
    if last:
        summary = {k: last.get(k) for k in ("epoch", "loss", "nmi_true", "ari_true", "nmi_prev", "n_empty")}
        print(
            "last epoch: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        )
    return 0


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="k-NN, per-layer linear probes and clustering metrics of a run or checkpoint, beside random init",
        description="Evaluate a run directory or a checkpoint file (ours or the released DeepCluster layout).",
    )
    p.add_argument("target", help="run directory or checkpoint file")
    add_option_flags(p, section_flags("evaluate", EvalConfig))
    add_common_flags(p, progress=True, trust=True)


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "report",
        help="(re)build a run's HTML report: curves, cluster grids, what the filters see",
        description="Write RUN_DIR/report/index.html (opens from disk) with its PNGs; thumbnails are cached.",
    )
    p.add_argument("run_dir", help="a run directory")
    add_option_flags(p, section_flags("report", ReportOptions))
    p.add_argument(
        "--tap",
        action="append",
        metavar="LAYER[:C,C,...]",
        help="a layer to show (e.g. conv5, or conv5:3,17,42 for chosen channels); repeatable "
        "(default: a middle and the last conv layer, --channels random channels each)",
    )
    add_common_flags(p, trust=True)


def _command_options(args: argparse.Namespace, section: str, kind: type, **fixed: Any) -> Any:
    """A command's options (`kind`, a dataclass of `option` fields) from its flags (the others at their
    defaults, or `fixed`); ConfigError from the first declared check a value fails, naming its flag."""
    given = {name: value for _, name, _, value in given_flags(args, section_flags(section, kind))}
    options = kind(**fixed, **given)
    check_section(section, options)
    return options


def _run_report(args: argparse.Namespace) -> int:
    from deepcluster.report.build import build_report

    options = _command_options(args, "report", ReportOptions, taps=parse_taps(args.tap))
    print(f"report: {build_report(args.run_dir, options, trust_checkpoint=args.trust_checkpoint)}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from deepcluster.evaluate.runner import evaluate, format_results

    config = _command_options(
        args,
        "evaluate",
        EvalConfig,
        target=args.target,
        progress=not args.no_progress,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(format_results(evaluate(config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `deepcluster` argument parser (train's flags from the settings table of the core sections and of
    the registered methods' sections)."""
    parser = argparse.ArgumentParser(prog="deepcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands, METHODS)
    _add_evaluate_parser(commands)
    _add_report_parser(commands)
    for add_parser, _ in _use_commands().values():
        add_parser(commands)
    return parser


def _use_commands() -> dict[str, Any]:
    """The commands on a trained run (embed, assign, ...): deepcluster.use.commands.COMMANDS."""
    from deepcluster.use.commands import COMMANDS

    return COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deepcluster` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    terminal = logging.StreamHandler()
    # The run's log file takes INFO from the same logger: -q quiets the terminal only.
    terminal.setLevel(level)
    terminal.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[terminal])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded is not news
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit fails the write (named below) instead of killing us
        with contextlib.suppress(ValueError):  # main() called from a thread other than the main one
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from deepcluster.data.sources import DataError
    from deepcluster.engine.state import TrainingDiverged
    from deepcluster.engine.stop import PREEMPTED_EXIT, Preempted
    from deepcluster.storage import DISK_FULL_ERRNOS, WriteFailed

    try:
        if args.command == "train":
            return _run_train(args, METHODS)
        if args.command == "evaluate":
            return _run_evaluate(args)
        if args.command == "report":
            return _run_report(args)
        if args.command in _use_commands():
            return _use_commands()[args.command][1](args)
    except (ConfigError, DataError) as error:
        print(f"deepcluster: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"deepcluster: training diverged: {error}", file=sys.stderr)
        return 3
    except Preempted as error:
        print(f"deepcluster: {error}", file=sys.stderr)
        return PREEMPTED_EXIT
    except OSError as error:  # a write that failed: WriteFailed names its file; space and size errors too
        if not (isinstance(error, WriteFailed) or error.errno in DISK_FULL_ERRNOS):
            raise
        print(
            f"deepcluster: error: could not write {error.filename or 'a file'}: {error.strerror}; what was "
            "written before (the previous checkpoint included) is intact: fix that and run again (--resume RUN)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("deepcluster: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
