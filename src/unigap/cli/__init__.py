"""The `unigap` command line: one typer app, one sub-app per pipeline stage.

`main` is the console-script entry point. It turns a `UserError`, or a flag or value click cannot parse (an
infinite float and an int beyond 64 bits included), into one line on stderr and exit code 2, so a user's mistake
never shows a traceback or a usage box; a write the file system refuses mid-run is one line with exit code 1.
"""

from __future__ import annotations

import errno
import functools
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from unigap.errors import INTERRUPTED, STORAGE_REFUSED, UserError, first_line
from unigap.threads import configure_threads

app = typer.Typer(
    name="unigap",
    help="Measure and close the understanding-generation gap of unified multimodal models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach each stage's sub-app; imported lazily so `unigap --help` stays fast."""
    from unigap.cli.merge import merge
    from unigap.cli.prefs import app as prefs_app
    from unigap.cli.train import train
    from unigap.cli.world import app as world_app

    app.add_typer(world_app, name="world")
    app.add_typer(prefs_app, name="prefs")
    app.command("train")(train)
    app.command("merge")(merge)
    from unigap.cli.pretrain import pretrain_command

    app.command("pretrain")(pretrain_command)
    from unigap.cli.compare import app as compare_app
    from unigap.cli.evaluate import app as eval_app
    from unigap.cli.inference import app as inference_app

    app.add_typer(eval_app)  # unnamed: `eval` becomes a top-level command
    app.add_typer(compare_app)  # `compare`
    app.add_typer(inference_app)  # `generate`, `ask`
    from unigap.cli.diagnose import app as diagnose_app

    app.add_typer(diagnose_app)  # `diagnose`
    from unigap.cli.study import study_command, tune_command

    app.command("study")(study_command)
    app.command("tune")(tune_command)
    from unigap.cli.refine import app as refine_app

    app.add_typer(refine_app)  # `refine`
    from unigap.cli.selfimprove import app as selfimprove_app

    app.add_typer(selfimprove_app)  # `selfimprove`


try:  # before the commands' modules import numpy, whose BLAS reads OMP_NUM_THREADS once (`main` reports a bad value)
    configure_threads()
except UserError:
    pass
_register()
# the commands that run data-parallel under `accelerate launch` (`unigap.distributed`); the others would each run
# whole in every process, racing to write the same files, so they refuse
DATA_PARALLEL: dict[str, tuple[str, ...] | None] = {"train": None, "eval": None, "refine": None, "selfimprove": None, "prefs": ("build",)}  # subcommands


def _command(argv: list[str]) -> tuple[str, str | None]:
    """The command typed (the first word that is not an option) and its subcommand (`refine train`) where the next
    word names one of that command's; a word that follows an option may be its value, hence the check."""
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if first is None:
        return "", None
    group = _click_command().commands.get(argv[first])  # type: ignore[attr-defined]
    following = argv[first + 1] if first + 1 < len(argv) else None
    return argv[first], following if following in (getattr(group, "commands", None) or {}) else None


def _check_processes(command: str, subcommand: str | None) -> None:
    import os

    if "WORLD_SIZE" not in os.environ:  # no launcher: one process (and no torch import for `--help`)
        return
    from unigap import distributed

    if distributed.world_size() == 1 or not command:
        return
    subcommands = DATA_PARALLEL.get(command, ())
    if command in DATA_PARALLEL and (subcommands is None or subcommand in subcommands):
        return
    parallel = ", ".join(k if v is None else f"{k} {' '.join(v)}" for k, v in DATA_PARALLEL.items())
    raise UserError(f"`unigap {' '.join(filter(None, (command, subcommand)))}` runs in one process; launch it "
                    f"without accelerate (data-parallel commands: {parallel})")


# the commands whose --out may be a file; the others write a directory
FILE_OUTPUTS = ("eval", "compare", "prefs", "generate")
FILE_SUFFIXES = (".json", ".jsonl", ".png", ".jpg", ".csv", ".parquet", ".html", ".txt", ".safetensors")


def _check_out(argv: list[str], command: str, subcommand: str | None) -> None:
    """Every command writes under `--out`: a path below an existing file, one that cannot be written, or a file where a
    command writes a directory fails here, before any work, instead of as a traceback after it."""
    import os

    from unigap.atomic import check_creatable, check_name_fits

    if {"--help", "-h"} & set(argv):  # (help writes nothing)
        return
    writes_a_file = _writes_a_file(argv, command)
    for value in _outs(argv, command, subcommand):
        if not value.strip():  # an unset shell variable: Path("") would be the current directory
            raise UserError("--out is empty; give a path (. for the current directory)")
        if value.endswith(("/", os.sep)) and writes_a_file:
            raise UserError(f"--out {value} names a directory, and `unigap {command}` writes a file there: give "
                            f"a file name")
        check_creatable(value)
        if writes_a_file:
            check_name_fits(value)
        if command not in FILE_OUTPUTS and Path(value).is_file():
            raise UserError(f"--out {value} is a file, not a directory")
        # (refine --out r.json made a folder r.json)
        if not writes_a_file and not Path(value).is_dir() and Path(value).suffix.lower() in FILE_SUFFIXES:
            typed = " ".join(filter(None, (command, subcommand)))
            raise UserError(f"--out {value} names a file, and `unigap {typed}` writes a folder there (a file in it "
                            "per output): give a folder name")
        read = _read_from(argv, command, subcommand, Path(value))
        if read is not None:  # (eval --prompts p.json --out p.json wrote its report over the prompts)
            kind = "file" if Path(value).is_file() else "folder"
            raise UserError(f"--out {value} is a {kind} this command reads ({read}); choose another --out")
        made_by = _made_by(Path(value))
        if made_by is not None and made_by != " ".join(filter(None, (command, subcommand))):
            held = "holds" if Path(value).is_dir() else "is"
            raise UserError(f"--out {value} {held} the output of `unigap {made_by}`; choose another --out")


def _read_from(argv: list[str], command: str, subcommand: str | None, out: Path) -> str | None:
    """The other option whose value names the existing file or folder `out` is: a path option's (`--questions`,
    `--adapter`), or a text option's (`--model`, `--prompts`) unless the command reads it as a name (a split, the
    shipped model); never a number's (`--n 2 --out 2`)."""
    if not out.exists():
        return None
    for param in _params(command, subcommand):
        kind = str(param.bare_type() if callable(getattr(param, "bare_type", None)) else "str")  # (its annotation)
        if "Path" not in kind and "str" not in kind:
            continue
        for flag in (opt for opt in param.opts if opt != "--out"):
            for value in _values(argv, flag):
                if "Path" not in kind and _a_name(value):
                    continue
                try:
                    if Path(value).exists() and Path(value).samefile(out):
                        return flag
                except OSError:  # (a long prompt is no file name: ENAMETOOLONG)
                    continue
    return None


def _a_name(value: str) -> bool:
    """Whether the commands read a text option's `value` as a name, whatever a folder of that name holds: a split,
    the shipped model (imported only here: `unigap.model` loads torch)."""
    from unigap.model.loading import EMBEDDED
    from unigap.world import SPLITS

    return value in SPLITS or value in EMBEDDED


def _params(command: str, subcommand: str | None) -> list[Any]:
    """The click parameters of `unigap command [subcommand]` (none for an unknown command)."""
    group = _click_command().commands.get(command)  # type: ignore[attr-defined]
    chosen = (getattr(group, "commands", None) or {}).get(subcommand, group) if subcommand else group
    return list(getattr(chosen, "params", ()))


def _outs(argv: list[str], command: str, subcommand: str | None) -> list[str]:
    """Where the command writes: every `--out` typed, else its own default where it has one (`runs/refine`, ...;
    the study's by `--quick`), which is checked as a typed one is."""
    typed = _values(argv, "--out")
    if typed:
        return typed
    if command == "study":
        from unigap.cli.study import default_out

        return [str(default_out("--quick" in argv))]
    return [str(param.default) for param in _params(command, subcommand)
            if "--out" in getattr(param, "opts", ()) and not param.required and param.default not in (None, "")]


def _values(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag` (`--out X` or `--out=X`), read before click parses the command line."""
    return [argv[i + 1] if arg == flag else arg.split("=", 1)[1] for i, arg in enumerate(argv)
            if arg == flag and i + 1 < len(argv) or arg.startswith(f"{flag}=")]


def _writes_a_file(argv: list[str], command: str) -> bool:
    """Whether --out names a file (`Path` drops the trailing slash that says a user meant a directory)."""
    many = bool(_values(argv, "--prompts"))  # generate: a PNG per line
    return command in FILE_OUTPUTS and not (command == "generate" and many)


# the settings a run of these commands records first, before any manifest or inputs record (names as in
# `unigap.study.results` and `unigap.study.tune`, which import torch)
SETTINGS_RECORDS = {"study.json": "study", "tune.json": "tune"}


def _made_by(path: Path) -> str | None:
    """The command that wrote a directory (`refine train` as typed): its manifest's, or for a run not finished yet
    its inputs record's or its settings record's; of a JSON file, the command its record names (a manifest, an
    inputs record, or a report with its manifest inside, as `eval` writes), or for one that names none (`refine.json`,
    `diagnostics.json`, a study's `results.json`) the command that wrote its folder; None when none says."""
    from unigap.cli.common import INPUTS_FILE
    from unigap.manifest import MANIFEST_FILE, read_record

    if path.is_file():
        record = read_record(path) if path.suffix == ".json" else None
        records = [record or {}, (record or {}).get("manifest") or {}]
        if path.suffix == ".json" and not any(isinstance(r, dict) and isinstance(r.get("command"), str)
                                              for r in records):
            return _made_by(path.parent) if path.parent != path else None
    else:
        records = [read_record(path / name) or {} for name in (MANIFEST_FILE, INPUTS_FILE)]
        records += [{"command": command} for name, command in SETTINGS_RECORDS.items() if (path / name).is_file()]
    for record in records:
        command = record.get("command") if isinstance(record, dict) else None
        if isinstance(command, str):
            return command.replace("-", " ")
    return None


INT64 = 2**63  # seeds and counts reach torch and numpy as 64-bit integers


@functools.cache
def _click_command() -> object:
    """The click command typer builds from `app`, once per process (`_command` reads it, `main` runs it), with every
    option's numbers checked as it parses."""
    import typer.main

    command = typer.main.get_command(app)
    _checked_numbers(command)
    return command


def _checked_numbers(command: object) -> None:
    """Make every option refuse an infinite or NaN float and an int outside 64 bits as it parses: both pass the
    commands' own range checks (`not lr >= 0` is False for inf) and would fail only later, after work (NaN weights,
    JSON that cannot hold inf, torch's "Overflow when unpacking long long")."""
    for param in getattr(command, "params", ()):
        param.process_value = _refusing_odd_numbers(param, param.process_value)
    for sub in (getattr(command, "commands", None) or {}).values():
        _checked_numbers(sub)


def _refusing_odd_numbers(param: object, process_value: Callable[[object, object], object]) -> Callable:
    import math

    def checked(ctx: object, value: object) -> object:
        value = process_value(ctx, value)
        for number in value if isinstance(value, list | tuple) else (value,):
            if isinstance(number, float) and not math.isfinite(number):
                raise typer.BadParameter(f"{number} is not a finite number", ctx=ctx, param=param)
            if isinstance(number, int) and not isinstance(number, bool) and not -INT64 <= number < INT64:
                raise typer.BadParameter(f"{number} does not fit in 64 bits", ctx=ctx, param=param)
        return value

    return checked


RERUN_CONTINUES = ("study", "tune", "pretrain")  # the long jobs a plain rerun resumes (no --resume flag)


def _how_to_continue(argv: list[str], command: str, subcommand: str | None) -> str:
    """After ^C: how the same command picks up where it stopped, where it can."""
    if command in RERUN_CONTINUES:
        return "; rerun the same command to continue"
    options = {opt for param in _params(command, subcommand) for opt in getattr(param, "opts", ())}
    geneval = command != "generate" or _values(argv, "--layout")[-1:] == ["geneval"]  # (its only resumable layout)
    return "; rerun it with --resume to continue" if "--resume" in options and geneval else ""


@functools.cache  # once per process (tests call `main` many times)
def _one_line_warnings() -> None:
    """unigap's own warnings (`UnigapWarning`) as one `unigap: warning: ...` line, like its errors (Python's format
    adds the file, line and source text of the warning call, which tell a user nothing); others keep their format."""
    import warnings

    from unigap.errors import UnigapWarning

    standard = warnings.formatwarning

    def formatted(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
        if issubclass(category, UnigapWarning):
            return f"unigap: warning: {message}\n"
        return standard(message, category, filename, lineno, line)

    warnings.formatwarning = formatted


def _in_the_way(exc: OSError, argv: list[str]) -> str | None:
    """What stood where a command reads or writes at a path the user gave (a folder where a file goes, or a file where
    a folder goes, say inside --out), from the error it raised; None for a path the command line does not lead to."""
    if not exc.filename:
        return None
    target = Path(exc.filename2 or exc.filename)  # (a rename's target is its second name)
    values = [arg.split("=", 1)[-1] for arg in argv]  # (`--out=X` gives X)
    given = [Path(value).resolve() for value in values if value and not value.startswith("-")]
    if not any(target.resolve().is_relative_to(path) for path in given):
        return None
    if isinstance(exc, NotADirectoryError):
        target = next((p for p in target.parents if p.exists() and not p.is_dir()), target)
    kind = "a directory" if target.is_dir() else "a file"
    goes = "a file" if isinstance(exc, IsADirectoryError) else "a directory"
    if kind == goes:  # (a FileExistsError where the entry is of the kind needed: it had to be new)
        return f"{target} already exists; move it away or choose another path"
    return f"{target} is {kind}, where unigap needs {goes}; move it away or choose another path"


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM (`kill`, `timeout`, a scheduler's preemption) handled as ^C: every `finally` runs (a study records
    the attempt's time, staged files are removed) and the run ends in one line, exit 130, ready to resume. Returns
    what puts the handler before back (nothing to do off the main thread, where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(*_: Any) -> None:  # (signal number, frame)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)  # (None: a handler set outside Python, restored as the default)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _out_of_memory(exc: BaseException) -> bool:
    """A GPU's out-of-memory error (torch's), or the host's where an allocation fails rather than the process being
    killed: not a bug, and nothing half written (results are written atomically); a state a smaller batch avoids."""
    torch = sys.modules.get("torch")
    return (isinstance(exc, MemoryError) or torch is not None and isinstance(exc, torch.OutOfMemoryError)
            or "DefaultCPUAllocator: can't allocate memory" in str(exc))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes (a `UserError`, or a flag click cannot parse) become one `unigap: error: ...` line
    on stderr with exit code 2; a file system that refuses a write, one line with exit code 1."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model load
    restore_sigterm = _sigterm_as_interrupt()
    command, subcommand = "", None  # (named before anything can fail)
    try:
        configure_threads()  # before torch is imported
        _one_line_warnings()
        typed = sys.argv[1:] if argv is None else argv
        command, subcommand = _command(typed)
        _check_processes(command, subcommand)
        _check_out(typed, command, subcommand)
        code = _click_command().main(args=typed, prog_name="unigap", standalone_mode=False)
        if code == INTERRUPTED:
            print(f"unigap: interrupted{_how_to_continue(typed, command, subcommand)}", file=sys.stderr)
        sys.exit(code if isinstance(code, int) else 0)  # an int: `typer.Exit(code)` (a guard's exit 3), or 130 on ^C
    except typer.TyperException as exc:  # click's usage errors: a bad flag or value (no arguments: help was shown)
        context = getattr(exc, "ctx", None)  # (none for a value a command refuses itself: the command typed)
        usage = context.command_path if context else " ".join(filter(None, ("unigap", command, subcommand)))
        if exc.format_message():
            print(f"unigap: error: {exc.format_message()} (see `{usage} --help`)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # before click runs the command (which turns its own ^C into exit 130): nothing written
        print("unigap: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except typer.Abort:  # end of input where a prompt waited
        print("unigap: aborted", file=sys.stderr)
        sys.exit(1)
    except UserError as exc:
        print(f"unigap: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        typed = sys.argv[1:] if argv is None else argv
        in_the_way = _in_the_way(exc, [*typed, *_outs(typed, command, subcommand)])  # (a default --out is the user's)
        if in_the_way is None:  # not at a path the user gave: unigap's own fault, with its traceback
            raise
        print(f"unigap: error: {in_the_way}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # (a path the user gave: Python 3.11's `exists` raises on one)
            print(f"unigap: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
            sys.exit(2)
        if exc.errno not in STORAGE_REFUSED:  # not the file system's refusal: unigap's own fault, with its traceback
            raise
        where = f": {exc.filename}" if exc.filename else ""
        typed = sys.argv[1:] if argv is None else argv
        print(f"unigap: error: {exc.strerror}{where}{_how_to_continue(typed, command, subcommand)}", file=sys.stderr)
        sys.exit(1)
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):  # unigap's own fault, with its traceback
            raise
        typed = sys.argv[1:] if argv is None else argv
        print(f"unigap: error: out of memory ({first_line(exc)}); a smaller --batch-size (or --n), where the command "
              f"takes one, may fit{_how_to_continue(typed, command, subcommand)}", file=sys.stderr)
        sys.exit(1)
    finally:
        restore_sigterm()
        if "WORLD_SIZE" in os.environ:  # under a launcher: leave the process group before exit
            from unigap import distributed

            distributed.close()
