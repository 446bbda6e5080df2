"""``bias-audit``: a thin command line over the library.

Exit codes: 0 ok, 1 a ``check`` failed, 2 a usage or input error (one line, no traceback),
130 interrupted (the message says how to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bias_audit.core._malloc import keep_freed_memory
from bias_audit.core.config import ENGINES, TrainConfig
from bias_audit.errors import BiasAuditError, ConfigError

__all__ = ["main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse would print the whole usage and sys.exit(2); the CLI's contract is one line.
    def error(self, message: str) -> typing.NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def _build_parser() -> _Parser:
    from bias_audit import __version__

    p = _Parser(prog="bias-audit", description="Audit image classifiers for dataset bias.")
    p.add_argument("--version", action="version", version=f"bias-audit {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="no progress bars or summaries",
        )
        return sp

    r = add("run", "run an audit from a TOML config")
    r.add_argument("config", type=Path, help="the audit config (TOML)")
    r.add_argument("--out", type=Path, help="run folder (default: [output] dir, else runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    r.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    r.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    r.add_argument(
        "--redact", action="store_true", help="no paths and no config comments in report.html"
    )
    # [run] of the config, overridden (the local engine needs no Ray)
    r.add_argument("--engine", choices=ENGINES, default=None, help="local (default) or ray")
    r.add_argument(
        "--address", default=None, help="Ray cluster: auto, ray://host:port (default: a local Ray)"
    )
    r.add_argument("--workers", type=int, default=None, metavar="N", help="Ray actors")
    r.add_argument(
        "--gpus-per-worker", type=float, default=None, metavar="G", help="GPUs per Ray actor"
    )

    t = add("train", "train a model (flags, or a TOML file of the same keys)")
    t.add_argument("config", nargs="?", type=Path, help="a TOML file of TrainConfig keys")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set or override one TrainConfig key (TOML value syntax); repeatable",
    )
    t.add_argument("--resume", action="store_true", help="continue from out/last.pt")
    t.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    _add_train_flags(t)

    rp = add("report", "render the report again from a run folder")
    rp.add_argument("run_dir", type=Path)
    rp.add_argument(
        "--redact", action="store_true", help="no paths and no config comments in report.html"
    )

    c = add("compare", "compare two runs over the images they share (paired)")
    c.add_argument("run_a", type=Path)
    c.add_argument("run_b", type=Path)
    c.add_argument("--model-a", default=None, help="model of run A (default: its first)")
    c.add_argument("--model-b", default=None, help="model of run B (default: its first)")
    c.add_argument("--out", type=Path, default=None, help="also write the table (.csv or .parquet)")

    k = add("check", "a gate for model review: exit 1 listing failed criteria, else 0")
    k.add_argument("run_dir", type=Path)
    k.add_argument("--max-confounder-mass", type=float, default=None, metavar="X")
    k.add_argument(
        "--max-confounder-lift", type=float, default=None, metavar="L",
        help="attention on the confounders over their share of the image",
    )  # fmt: skip
    k.add_argument(
        "--max-flip-excess", type=float, default=None, metavar="E",
        help="flip rate when the confounders are occluded minus the random-patch rate",
    )  # fmt: skip
    k.add_argument("--min-worst-group-accuracy", type=float, default=None, metavar="Y")
    k.add_argument("--max-flip-rate", type=float, default=None, metavar="Z")
    k.add_argument("--model", default=None, help="judge only this model")

    cs = add("case-study", "run a shipped case study")
    cs.add_argument("name")
    cs.add_argument("--out", type=Path, default=None)
    cs.add_argument("--quick", action="store_true", help="a small, fast version")
    cs.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    cs.add_argument("--strict", action="store_true", help="exit 1 when an acceptance check fails")
    cs.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    cs.add_argument("--seed", type=int, default=None, help="data and model seed (default 0)")
    cs.add_argument(
        "--threads", type=int, default=2,
        help="torch CPU threads of the audit (default 2; training always runs on 1)",
    )  # fmt: skip
    return p


def _train_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.init]


def _scalar_type(annotation: Any) -> Any:
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(
            annotation.replace(" | None", "").strip(), None
        )
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in (int, float, str, bool) else None


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    # The flags mirror TrainConfig's fields, so a new field needs no CLI change.
    for f in _train_fields():
        flag = "--" + f.name.replace("_", "-")
        dest = f"tc_{f.name}"
        text = f.type if isinstance(f.type, str) else str(f.type)
        if text.startswith("tuple[str"):
            parser.add_argument(flag, dest=dest, nargs="+", default=None, metavar="NAME")
            continue
        if text.startswith("tuple[float"):
            parser.add_argument(flag, dest=dest, nargs=3, type=float, default=None, metavar="V")
            continue
        kind = _scalar_type(f.type)
        if kind is bool:
            parser.add_argument(
                flag, dest=dest, default=None, action=argparse.BooleanOptionalAction
            )
        elif kind is not None:
            parser.add_argument(flag, dest=dest, type=kind, default=None, metavar=f.name.upper())


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _cmd_run(args: argparse.Namespace) -> int:
    from bias_audit.core.config import AuditConfig

    config = _with_run_flags(AuditConfig.from_toml(args.config), args)
    args._run_dir = config.run_dir(args.out)
    from bias_audit.pipelines import audit

    result = audit(
        config,
        out=args.out,
        resume=args.resume,
        force=args.force,
        device=args.device,
        progress=_progress(args),
    )
    if config.report.enabled:
        from bias_audit.report import render_report

        render_report(result.run_dir, redact=args.redact)
    if not args.quiet:
        for f in result.findings:
            print(f"[{f['severity']}] {f['text']}")
        print(f"run folder: {result.run_dir}")
    return EXIT_OK


def _with_run_flags(config: Any, args: argparse.Namespace) -> Any:
    """The config with ``[run]`` replaced by the flags that were given (validated as in a file)."""
    flags = {
        "engine": args.engine, "address": args.address, "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
    }  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return config
    try:
        run = dataclasses.replace(config.run, **given)
    except ConfigError as err:
        # "[run] workers: expected ..." -> "--workers: expected ..."
        for key in given:
            prefix = f"[run] {key}:"
            if str(err).startswith(prefix):
                flag = "--" + key.replace("_", "-")
                raise ConfigError(flag + ":" + str(err)[len(prefix) :]) from None
        raise
    return dataclasses.replace(config, run=run)


def _cmd_train(args: argparse.Namespace) -> int:
    import tomllib

    try:
        from bias_audit.pipelines import TrainConfig, train_classifier
    except ImportError as err:
        raise ConfigError(f"train: the models layer is not available: {err}") from err
    values: dict[str, Any] = {}
    base = Path.cwd()
    if args.config is not None:
        try:
            text = args.config.read_text(encoding="utf-8")
            values.update(tomllib.loads(text))
        except FileNotFoundError as err:
            raise ConfigError(f"{args.config}: config file not found") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{args.config}: not valid TOML: {err}") from err
        base = args.config.resolve().parent
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"train: --set {item!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw  # a bare word is a string
    for name, value in vars(args).items():
        if name.startswith("tc_") and value is not None:
            values[name[3:]] = value
    fields = {f.name for f in _train_fields()}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"train: unknown key {key!r}; expected one of {', '.join(sorted(fields))}"
            )
    # Paths in a train TOML are relative to that file, like the audit config's.
    for key in ("train_manifest", "val_manifest", "out"):
        if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            values[key] = str(base / values[key])
    from_dict = getattr(TrainConfig, "from_dict", None)
    try:
        config = from_dict(values) if from_dict is not None else TrainConfig(**values)
    except TypeError as err:
        raise ConfigError(f"train: {err}") from err
    # The trainer chooses: a bar on a terminal, one line per epoch in a log.
    result = train_classifier(config, resume=args.resume, force=args.force,
                              progress=not args.quiet)  # fmt: skip
    if not args.quiet:
        last = result.history[result.best_epoch - 1] if result.history else {}
        acc = last.get("val_worst_group_acc", last.get("val_acc"))
        extra = f", validation worst-group accuracy {acc:.3f}" if isinstance(acc, float) else ""
        print(f"checkpoint: {result.checkpoint} (best epoch {result.best_epoch}{extra})")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        from bias_audit.report import render_report
    except ImportError as err:
        raise ConfigError(f"report: the report layer is not available: {err}") from err
    if not (args.run_dir / "summary.json").is_file():
        raise ConfigError(f"{args.run_dir}: not a finished run folder (no summary.json)")
    path = render_report(args.run_dir, redact=args.redact)
    if not args.quiet:
        print(f"report: {path}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from bias_audit.pipelines import compare_runs

    table = compare_runs(args.run_a, args.run_b, model_a=args.model_a, model_b=args.model_b)
    if args.out is not None:
        from bias_audit.io._files import atomic_write

        with atomic_write(args.out, "wb" if args.out.suffix == ".parquet" else "w") as fh:
            if args.out.suffix == ".parquet":
                table.to_parquet(fh, index=False)
            else:
                table.to_csv(fh, index=False)
    if not args.quiet or args.out is None:
        import pandas as pd

        with pd.option_context(
            "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format
        ):
            print(table.to_string(index=False))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from bias_audit.pipelines import check_run

    criteria = check_run(
        args.run_dir,
        max_confounder_mass=args.max_confounder_mass,
        max_confounder_lift=args.max_confounder_lift,
        max_flip_excess=args.max_flip_excess,
        min_worst_group_accuracy=args.min_worst_group_accuracy,
        max_flip_rate=args.max_flip_rate,
        model=args.model,
    )
    failed = [c for c in criteria if c.failed]
    for c in criteria:
        if c.failed or not args.quiet:
            print(c.line)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _cmd_case_study(args: argparse.Namespace) -> int:
    try:
        from bias_audit.case_studies import run_case_study
    except ImportError as err:
        raise ConfigError(
            f"case-study {args.name!r}: bias_audit.case_studies.run_case_study is not available "
            f"in this version ({err})"
        ) from err
    args._run_dir = args.out
    result = run_case_study(
        args.name,
        out=args.out,
        quick=args.quick,
        force=args.force,
        progress=not args.quiet,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
    )
    failed = result.failed()
    if not args.quiet:
        print(result.summary_text())
    elif failed:
        for c in failed:
            print(c.line)
    # Without --strict a failed check is printed and the exit is 0 (exploring settings);
    # `make demo` and CI pass --strict, so a failed acceptance is never a silent success.
    return EXIT_CHECK_FAILED if args.strict and not result.passed else EXIT_OK


_COMMANDS = {
    "run": _cmd_run,
    "train": _cmd_train,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "check": _cmd_check,
    "case-study": _cmd_case_study,
}


def _interrupted(args: argparse.Namespace | None) -> str:
    if args is not None and args.command == "run":
        out = getattr(args, "_run_dir", None) or args.out
        resume = f"bias-audit run {args.config}" + (f" --out {out}" if out else "") + " --resume"
        for flag in ("engine", "address", "workers", "gpus_per_worker"):
            if getattr(args, flag, None) is not None:
                resume += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
        return f"interrupted; completed batches are saved: resume with `{resume}`"
    if args is not None and args.command == "case-study":
        return "interrupted; run the same command again to continue (--force starts over)"
    return "interrupted"


# The library speaks in its arguments' names; on the command line they are flags.
_CLI_WORDS = {
    "resume=True": "--resume",
    "force=True": "--force",
    # check's limits only: a [gate] key in a config message keeps its name
    **{
        f"check: {key}:": f"check: --{key.replace('_', '-')}:"
        for key in (
            "max_confounder_mass",
            "max_confounder_lift",
            "max_flip_excess",
            "min_worst_group_accuracy",
            "max_flip_rate",
        )
    },  # fmt: skip
    "another output folder": "another --out",
    "check: model:": "check: --model:",
}


def _in_cli_words(message: str) -> str:
    for api, flag in _CLI_WORDS.items():
        message = message.replace(api, flag)
    return message


def _os_error(err: OSError) -> str:
    what = err.strerror or str(err) or type(err).__name__
    where = err.filename if err.filename is not None else None
    text = f"{where}: {what}" if where is not None else what
    if err.filename2 is not None:
        text += f" (and {err.filename2})"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args: argparse.Namespace | None = None
    keep_freed_memory()  # before torch allocates anything
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BiasAuditError as err:
        print(f"error: {_in_cli_words(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        # The environment, not a bug: an unwritable or full output folder, a name the file
        # system refuses. One line, like every input error, never a traceback.
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as err:  # --help and --version
        return int(err.code or 0) if isinstance(err.code, int) or err.code is None else EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
