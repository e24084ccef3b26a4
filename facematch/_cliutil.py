"""The machinery every ``facematch`` command shares: app factory, lazy sub-commands, the one error style.

Every typer app of the command line is made by :func:`new_app`, whose click group
(:class:`FacematchGroup`) turns whatever a command raises into one line on stderr::

    error [no_face]: photos/a.jpg: no face found in the image

and, when ``--json`` is on the command line, a JSON object on stdout as well::

    {"error": {"code": "no_face", "message": "no face found in the image", "path": "photos/a.jpg"}}

with a documented exit status (:data:`EXIT_CODES_HELP`). Commands just raise: a
:class:`~facematch.errors.FacematchError` (its ``code`` and the image or path it is about,
``details["image"]`` / ``details["path"]``), an ``OSError``, a missing optional module
(answered with its install line, :mod:`facematch.extras`), or a click usage error.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import FacematchError
from .extras import install_hint

EXIT_OK = 0
EXIT_FAILURE = 1  # it failed while running: model, gallery state, missing package, I/O, a check that did not pass
EXIT_USAGE = 2  # the command line or its inputs are wrong: option, image, no face, unknown identity, ...
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\b
Exit status:
  0    done (NO MATCH and unknown are answers, not errors)
  1    failed while running: model missing or corrupt, gallery locked,
       optional package missing, I/O error, a check that did not pass
  2    usage or input error: bad option, unreadable image, no face,
       unknown or duplicate identity, threshold or rate out of range
  130  interrupted
Errors are one line on stderr, error [code]: <image or path>: message;
with --json also {"error": {"code", "message", "path"}} on stdout."""

# FacematchError codes that are run-time failures although their HTTP status is 4xx
RUNTIME_FAILURE_CODES = frozenset({"gallery_locked", "export_validation_failed"})


# The options spelled the same in the SDK's commands and the gallery's (eval and export word their own).
JsonOpt = Annotated[bool, typer.Option("--json", help='Print JSON (errors too, as {"error": ...}).')]
DetectorOpt = Annotated[str | None, typer.Option(help="Detector card id, card JSON, or model file with a card.")]
EmbedderOpt = Annotated[str | None, typer.Option(help="Embedder card id, card JSON, or model file with a card.")]
AlignedOpt = Annotated[
    bool,
    typer.Option(
        "--aligned/--detect",
        help="--aligned: the images are aligned 112x112 face crops (no detection); --detect: photos, "
        "the largest face is detected and aligned first.",
    ),
]


class OutputError(FacematchError):
    """An output file named on the command line cannot be written."""

    code = "cannot_write"
    http_status = 500


class CheckFailedError(FacematchError):
    """A command that checks something (models, a demo, an export) found it wrong."""

    code = "check_failed"
    http_status = 500


@dataclass(frozen=True)
class CliError:
    """An error as the command line reports it."""

    code: str
    message: str
    exit_code: int
    path: str | None = None

    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return " ".join(f"error [{self.code}]: {where}{self.message}".split())

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.path:
            body["path"] = self.path
        return {"error": body}


def exit_code_for(exc: FacematchError) -> int:
    """2 for errors in what the caller gave (HTTP 4xx), 1 for failures while running (5xx, locks, checks)."""
    if exc.code in RUNTIME_FAILURE_CODES or not 400 <= int(exc.http_status) < 500:
        return EXIT_FAILURE
    return EXIT_USAGE


def _cli_message(exc: FacematchError, message: str) -> str:
    """The SDK's message with the action named as the command line spells it (commands name their own
    actions where they differ, e.g. ``gallery enroll --add`` or ``gallery import --skip-existing``)."""
    if exc.code == "gallery_locked":  # the SDK's advice (read_only=True) has no command-line spelling for writes
        return message.split(";")[0] + "; stop that process first (a running 'facematch serve'?), or write through it"
    return message


def _facematch_error(exc: FacematchError) -> CliError:
    path = exc.details.get("image") or exc.details.get("path")
    message = exc.message
    if path and message.startswith(f"{path}: "):
        message = message[len(str(path)) + 2 :]
    return CliError(exc.code, _cli_message(exc, message), exit_code_for(exc), str(path) if path else None)


_OS_CODES: dict[type[OSError], tuple[str, int]] = {
    FileNotFoundError: ("file_not_found", EXIT_USAGE),
    IsADirectoryError: ("is_a_directory", EXIT_USAGE),
    NotADirectoryError: ("not_a_directory", EXIT_USAGE),
    PermissionError: ("permission_denied", EXIT_USAGE),
}


def _os_error(exc: OSError) -> CliError:
    code, exit_code = next(((c, e) for t, (c, e) in _OS_CODES.items() if isinstance(exc, t)), ("io_error", 1))
    path = exc.filename if exc.filename is not None else None
    return CliError(code, exc.strerror or str(exc), exit_code, str(path) if path is not None else None)


def describe(exc: BaseException) -> CliError | None:
    """How the command line reports ``exc``; ``None`` for what is not an error (``SystemExit``)."""
    if isinstance(exc, FacematchError):
        return _facematch_error(exc)
    if isinstance(exc, ImportError):
        module = exc.name or str(exc)
        top = module.split(".", 1)[0]
        return CliError("missing_dependency", f"{top} is not installed: {install_hint(top)}", EXIT_FAILURE)
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", "interrupted", EXIT_INTERRUPTED)
    kind = type(exc).__name__
    if kind == "Abort":
        return CliError("aborted", "aborted", EXIT_FAILURE)
    exit_code = getattr(exc, "exit_code", None)
    format_message = getattr(exc, "format_message", None)
    if isinstance(exit_code, int) and callable(format_message):  # a click exception (usage errors: 2)
        ctx = getattr(exc, "ctx", None)
        text = str(format_message())
        if ctx is not None:
            text = f"{text.rstrip('.')}; see '{ctx.command_path} --help'"
        return CliError("usage_error" if exit_code == EXIT_USAGE else "error", text, exit_code)
    if isinstance(exc, Exception):
        return CliError(
            "internal_error",
            f"{kind}: {exc} (a bug in facematch: please report it; -v shows the traceback)",
            EXIT_FAILURE,
        )
    return None


def report(err: CliError, *, as_json: bool) -> int:
    """Print ``err`` (stderr; stdout too as JSON with ``as_json``) and return its exit status."""
    typer.echo(err.line(), err=True)
    if as_json:
        typer.echo(json.dumps(err.to_dict(), indent=2))
    return err.exit_code


def wants_json(args: Sequence[str]) -> bool:
    """Whether ``--json`` is among the options of a command line (before any ``--``)."""
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _show_traceback(exc: BaseException) -> None:
    if logging.getLogger().isEnabledFor(logging.INFO):  # -v / --verbose
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


_ARGV = "facematch.argv"  # ctx.meta key: the arguments the outermost facematch group parsed


def _handle(exc: BaseException, argv: Sequence[str]) -> int | None:
    """Report ``exc`` in the one style; its exit status, or ``None`` when it is not ours to report."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
        exc.show()  # type: ignore[attr-defined]
        return EXIT_USAGE
    if isinstance(exc, BrokenPipeError):  # output piped into `head`: nothing left to tell
        return EXIT_FAILURE
    err = describe(exc)
    if err is None:
        return None
    if err.code == "internal_error":
        _show_traceback(exc)
    return report(err, as_json=wants_json(argv))


class _ReportingMain:
    """``main`` of a click command or group, reporting every error in the one style."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(  # type: ignore[misc]
                args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else EXIT_OK
        except BaseException as exc:
            handled = _handle(exc, argv)
            if handled is None:
                raise
            code = handled
        if standalone_mode:
            sys.exit(code)
        return code


class FacematchGroup(_ReportingMain, TyperGroup):  # type: ignore[misc]
    """A typer group that reports every error of its commands in the one style (see the module docstring).

    Errors are caught where the group invokes a command, so the style holds also when the group
    is mounted under another typer app (and in typer's ``CliRunner``).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta.setdefault(_ARGV, list(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, SystemExit):
            raise
        except BaseException as exc:
            if type(exc).__name__ == "Exit":  # click's own exit (a vendored or an older click)
                raise
            handled = _handle(exc, ctx.meta.get(_ARGV, []))
            if handled is None:
                raise
            raise typer.Exit(handled) from None


class FacematchCommand(_ReportingMain, TyperCommand):  # type: ignore[misc]
    """A typer command run on its own (not under a group) that reports errors in the one style."""


def run_command(fn: Callable[..., Any], name: str, argv: Sequence[str] | None = None) -> None:
    """Run the command function ``fn`` as a program of its own (``python -m facematch.server``)."""
    app = new_app(None, no_args_is_help=False)
    app.command(name, cls=FacematchCommand)(fn)
    typer.main.get_command(app).main(args=argv, prog_name=name)


@dataclass(frozen=True)
class LazyCommand:
    """A sub-command imported only when run or asked for help: ``module:attr`` and its one-line help.

    ``attr`` names a typer app (a command group) or a command function.
    """

    module: str
    attr: str
    help: str  # the command's help text (its first paragraph), as the command itself has it


class LazyGroup(FacematchGroup):
    """A group whose sub-commands listed in ``lazy_commands`` load on first use.

    ``facematch --help`` lists them from their one-line help without importing them.
    """

    lazy_commands: Mapping[str, LazyCommand] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in self.lazy_commands if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy_commands:
            cmd = load_command(cmd_name, self.lazy_commands[cmd_name])
            self.commands[cmd_name] = cmd
        return cmd

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list, shortened as click does, with lazy commands' help taken from the table."""
        cmds = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name) or TyperCommand(name, help=self.lazy_commands[name].help)
            if not cmd.hidden:
                cmds.append((name, cmd))
        if cmds:
            limit = formatter.width - 6 - max(len(n) for n, _ in cmds)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in cmds])


def load_command(name: str, entry: LazyCommand) -> Any:
    """The click command of a lazy entry (imports its module)."""
    obj = getattr(importlib.import_module(entry.module), entry.attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_command(obj)
    else:  # a command function
        single = new_app(help=None)
        single.command(name)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd


def new_app(help: str | None, *, cls: type[TyperGroup] = FacematchGroup, **kwargs: Any) -> typer.Typer:
    """A typer app with the command line's settings: the error style, plain help (flags shown as flags)."""
    settings: dict[str, Any] = {
        "no_args_is_help": True,
        "add_completion": False,
        "pretty_exceptions_enable": False,
        "rich_markup_mode": None,  # rich help shows every flag as `--json <bool>`; plain help shows `--json`
    }
    settings.update(kwargs)
    return typer.Typer(help=help, cls=cls, **settings)


def usage_error(message: str) -> Exception:
    """A usage error of the running command (reported as ``usage_error``, exit 2, with its ``--help`` hint)."""
    try:
        from typer._click.exceptions import UsageError
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - a typer that uses click itself
        from click.exceptions import UsageError  # type: ignore[no-redef,assignment]
        from click.globals import get_current_context  # type: ignore[no-redef,assignment]
    return UsageError(message, ctx=get_current_context(silent=True))


def check_failed(message: str, **details: Any) -> NoReturn:
    """End a checking command whose report is already printed (JSON or text): the error line, exit 1.

    Its report on stdout says what failed, so no second JSON document is printed there.
    """
    err = describe(CheckFailedError(message, **details))
    assert err is not None
    typer.echo(err.line(), err=True)
    raise typer.Exit(err.exit_code)


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    """``data`` as JSON with ``--json``, else the human ``text()``."""
    if as_json:
        echo_json(data)
    else:
        typer.echo(text())


@contextmanager
def reported_errors() -> Iterator[None]:
    """Report an error raised inside the block in the one style and exit with its status.

    Kept for commands written before the groups reported errors: commands of apps made by
    :func:`new_app` just raise (their group reports the error, with the same :func:`describe`).
    """
    try:
        yield
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:
        err = describe(exc)
        if err is None or type(exc).__name__ in ("UsageError", "BadParameter"):
            raise
        if err.code == "internal_error":
            raise
        raise typer.Exit(report(err, as_json=wants_json(sys.argv[1:]))) from None


__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "AlignedOpt",
    "CheckFailedError",
    "CliError",
    "DetectorOpt",
    "EmbedderOpt",
    "FacematchCommand",
    "FacematchGroup",
    "JsonOpt",
    "LazyCommand",
    "LazyGroup",
    "OutputError",
    "check_failed",
    "describe",
    "echo_json",
    "emit",
    "exit_code_for",
    "load_command",
    "matcher_for",
    "new_app",
    "report",
    "reported_errors",
    "run_command",
    "usage_error",
    "wants_json",
]


def matcher_for(
    detector: str | None, embedder: str | None, det_size: int | None = None, spin_wait: bool = False, **kw: Any
) -> Any:
    """The command's matcher. One-shot commands run a handful of inferences, so idle ONNX Runtime
    threads sleep instead of spinning (spinning steals the core the main thread needs next);
    batch commands pass ``spin_wait=True`` for throughput."""
    from .matcher import FaceMatcher

    return FaceMatcher(detector=detector, embedder=embedder, det_size=det_size, spin_wait=spin_wait, **kw)
