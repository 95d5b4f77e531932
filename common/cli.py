"""What every command line shares: flags made from dataclasses, and one way to run a `main`.

Every entry point (`python -m trainer.train`, `trainer.downstream.train`, the pipeline's
runners, the data sources, the benchmarks, `serving.client`) is built the same way:

    parser = cli.ArgumentParser(prog="python -m trainer.train", description=...)
    model_flags = cli.add_dataclass_flags(parser, ModelConfig, help_texts=FLAG_HELP)
    args = parser.parse_args(argv)                # --json and --verbose come with the parser
    config = model_flags.build(args)              # the defaults, then the flags given
    return cli.run(lambda: train(config), args, show=format_table, errors=(DataError,))

Flags (`add_dataclass_flags`): one `--<field>` per field of the dataclass, typed by its
annotation: `int`, `float`, `str`; `bool` as the pair `--<field>` / `--no-<field>`;
`tuple[int, ...]` (or `list[...]`) as comma-separated values (`--mlp_hidden 256,128`, an
empty value is `()`); `X | None` also takes `none` (or an empty value) for None. A flag left
out keeps the field's default, or a preset's: `ConfigFlags.given` returns only the fields
given on the command line, to apply over a starting point.

Errors: a bad flag (argparse's own checks, or a config's `__post_init__` refusing a value,
`fail`) and the input errors a command names (a missing or empty data file, ...; `run`) print
ONE line, `error: <message naming the flag or the file>`, on stderr and exit with 2, with no
traceback (`--verbose` prints it first). `--json` prints the command's result as one JSON
object, the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from common import console

INPUT_ERROR = 2  # the exit code of a bad flag or input (argparse's own)
# Errors of a path given on the command line: a command names its own input errors on top.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
_GIVEN = "_flags_given"  # the namespace attribute listing the flags given on the command line


class UsageError(SystemExit):
    """A flag's value is refused: exits with 2; `str()` is the printed `error: ...` line."""

    def __init__(self, message: str):
        super().__init__(INPUT_ERROR)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


class Failure(Exception):
    """Raised inside a command: `run` prints `error: <message>` and exits with `code`."""

    def __init__(self, message: str, code: int = INPUT_ERROR):
        super().__init__(message)
        self.code = code


def fail(message: str) -> NoReturn:
    """Refuses the command line: prints `error: <message>` on stderr, exits with 2."""
    error = UsageError(message)
    print(error, file=sys.stderr, flush=True)
    raise error


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's conventions: `--verbose` (`common.console`), `--json` (the
    last stdout line is the result as one JSON object; `json_flag=False` for a command with
    no result), and a refused flag printed as one `error: ...` line (exit 2, no usage text)."""

    def __init__(self, *args, json_flag: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if json_flag:
            self.add_argument("--json", action="store_true",
                              help="end with one JSON line of the result")
        console.add_verbose_flag(self)

    def error(self, message: str) -> NoReturn:
        fail(message)


# ------------------------------------------------------------------------- dataclass flags


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """The flags `add_dataclass_flags` made for the fields of `cls`: `dests` maps each field to
    its attribute of the parsed namespace (the flag's name without `--`)."""

    cls: type
    dests: Mapping[str, str]

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields whose flag was on the command line, with their values."""
        given = getattr(args, _GIVEN, ())
        return {field: getattr(args, dest) for field, dest in self.dests.items()
                if dest in given}

    def build(self, args: argparse.Namespace, base: Any = None, **fields: Any) -> Any:
        """`base` (default: `cls()`) with `fields` and then the flags given over it; a value
        the dataclass refuses is a bad flag (`fail`)."""
        values = {**fields, **self.given(args)}
        try:
            return self.cls(**values) if base is None else dataclasses.replace(base, **values)
        except (TypeError, ValueError) as e:
            fail(str(e))


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    prefix: str = "",
    help_texts: Mapping[str, str] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    converters: Mapping[str, Callable[[str], Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> ConfigFlags:
    """One flag per field of the dataclass `cls` (module doc), in a group titled `title`
    (default: "<cls> fields"). The flag of field `f` is `--<prefix><f>`, or `--<rename[f]>`;
    its help is `help_texts[f]` (or the field's `metadata["help"]`) and its default's;
    `choices[f]` restricts its values (these two, and `skip`, may name other fields too: one
    dict can serve several dataclasses), `converters[f]` replaces the converter the annotation
    gives (e.g. to refuse a value at parse time) and `defaults[f]` the default. Fields in
    `skip` get no flag; a field of a type with no flag form (a dataclass, a dict) must be
    skipped. Returns what reads the parsed flags back (`ConfigFlags`)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    rename, help_texts, choices = dict(rename or {}), dict(help_texts or {}), dict(choices or {})
    converters, defaults, skip = dict(converters or {}), dict(defaults or {}), set(skip)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((set(rename) | set(converters) | set(defaults)) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    hints = typing.get_type_hints(cls)
    group = parser
    if isinstance(parser, argparse.ArgumentParser):
        group = parser.add_argument_group(title or f"{cls.__name__} fields")
    dests = {}
    for name, field in fields.items():
        if name in skip:
            continue
        flag = rename.get(name, prefix + name)
        default = defaults[name] if name in defaults else _default(field)
        shown = _show(default)
        text = help_texts.get(name, field.metadata.get("help", ""))
        text = f"{text} (default: {shown})".strip().replace("%", "%%")
        if hints[name] is bool:
            group.add_argument(f"--{flag}", f"--no-{flag}", dest=flag, action=_Toggle,
                               default=default, help=text)
        else:
            convert = (converters.get(name)
                       or _converter(hints[name], f"{cls.__name__}.{name}"))
            group.add_argument(f"--{flag}", dest=flag, action=_Store, type=convert,
                               default=default, choices=choices.get(name), help=text,
                               metavar=_metavar(hints[name], choices.get(name)))
        dests[name] = flag
    return ConfigFlags(cls, dests)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # a required field: its flag must be given


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or '""'
    return "none" if value is None else str(value)


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    given = set(getattr(namespace, _GIVEN, ()))
    given.add(dest)
    setattr(namespace, _GIVEN, given)


class _Store(argparse.Action):
    """Stores the value and records that the flag was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _Toggle(argparse.Action):
    """`--<flag>` sets True, `--no-<flag>` False; records that the flag was given."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))
        _mark(namespace, self.dest)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def _converter(annotation: Any, where: str) -> Callable[[str], Any]:
    """The argparse `type` of a field annotation (module doc); TypeError for a type that has
    no flag form."""
    base, optional = _optional(annotation)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (tuple, list) and args and args[-1] is not Ellipsis and len(set(args)) > 1:
        raise TypeError(f"{where}: a flag cannot hold the mixed tuple {annotation}")
    if origin in (tuple, list) and args and args[0] in (int, float, str):
        item = args[0]

        def convert(text: str) -> Any:
            if optional and text.strip().lower() == "none":
                return None
            return origin(item(v.strip()) for v in text.split(",") if v.strip())

        convert.__name__ = f"comma-separated {item.__name__}"
        return convert
    if base in (int, float, str):
        def convert(text: str) -> Any:
            if optional and text.strip().lower() in ("none", ""):
                return None
            return base(text)

        convert.__name__ = base.__name__
        return convert
    raise TypeError(f"{where}: no flag for a field of type {annotation}; skip it")


def _metavar(annotation: Any, choices: Sequence[Any] | None) -> str | None:
    if choices is not None:
        return None  # argparse shows {a,b,c}
    base, optional = _optional(annotation)
    origin, args = typing.get_origin(base), typing.get_args(base)
    name = (f"{args[0].__name__.upper()},..." if origin in (tuple, list)
            else getattr(base, "__name__", str(base)).upper())
    return f"{name}|none" if optional else name


# ------------------------------------------------------------------------------- the runner


def run(
    body: Callable[[], Any],
    args: argparse.Namespace | None = None,
    *,
    show: Callable[[Any], str | None] | None = None,
    errors: Iterable[type[BaseException]] = (),
    exit_codes: Mapping[type[BaseException], int] | None = None,
    to_json: Callable[[Any], str] = json.dumps,
) -> int:
    """Runs a command's `body()` and returns its exit code: 0, printing `show(result)` (when
    not None) and, with `args.json`, `to_json(result)` as the last line (a result of None:
    nothing to print).

    The input errors, `errors` and `PATH_ERRORS` (a missing, empty or unreadable file, a
    flag's value the work refuses), and a `Failure` raised inside print one line,
    `error: <message>`, on stderr and return 2 (a `Failure` its own code; `exit_codes` maps
    other error types to theirs, e.g. a download that failed). With `args.verbose` the
    traceback comes first. Anything else propagates, with its traceback. Also sets up the
    console (`common.console.setup`) for `args.verbose`."""
    verbose = bool(getattr(args, "verbose", False))
    console.setup(verbose)
    codes = {**{error: INPUT_ERROR for error in (*errors, *PATH_ERRORS)}, **(exit_codes or {})}
    try:
        result = body()
    except Failure as e:
        return _report(e, str(e), e.code, verbose)
    except tuple(codes) as e:
        code = next((c for t, c in (exit_codes or {}).items() if isinstance(e, t)), INPUT_ERROR)
        return _report(e, error_message(e), code, verbose)
    if show is not None:
        text = show(result)
        if text is not None:
            print(text)
    if getattr(args, "json", False) and result is not None:
        print(to_json(result), flush=True)
    return 0


def error_message(error: BaseException) -> str:
    """An error's message: `<file>: <reason>` for an OS error on a file."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def _report(error: BaseException, message: str, code: int, verbose: bool) -> int:
    """Prints `error: <message>`: one line for an input error (code 2); another failure's
    message as it is (a report of several lines, e.g. a download's)."""
    if verbose:
        traceback.print_exception(type(error), error, error.__traceback__)
    if code == INPUT_ERROR:
        message = " ".join(message.split())
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
