"""The `backworks` command line.

Each command is one small function from parsed arguments to an exit code, wired in
by `build_parser` as a subcommand; a new command (serve, validate, new) is a parser
entry and a function. Exit codes: 0 all is well, 1 something examined is unusable
(or the server could not start), 2 the command itself was wrong (arguments, a
missing folder, a bad config file given to `plugins list`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from backworks.cli.scaffold import LANGUAGES, ScaffoldError, create_plugin_project
from backworks.config import (
    CONFIG_FILE,
    Config,
    ConfigSource,
    default_config,
    find_config,
    load_config,
    with_listen_address,
)
from backworks.errors import ConfigError, StartupError
from backworks.lifecycle.routes import shadowed_routes
from backworks.logs import configure_logging
from backworks.plugins import discovery
from backworks.plugins.examine import ScanResult

EXIT_OK = 0
EXIT_UNUSABLE = 1
EXIT_USAGE = 2

DEFAULT_PLUGIN_DIR = Path("plugins")
# `serve --workers N` refuses N above this many per CPU this process may run on: each
# worker is a whole server with its own plugins; past a few per core they only add
# memory, context switches and a shutdown that takes minutes (1000 on 2 cores: 6.5).
WORKERS_PER_CPU = 8


def max_workers() -> int:
    """The largest `--workers` accepted here: WORKERS_PER_CPU per usable CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - systems without affinity
        cpus = os.cpu_count() or 1
    return WORKERS_PER_CPU * max(cpus, 1)


class UsageError(Exception):
    """The command line asks for something impossible; main() exits with EXIT_USAGE."""


# ---------------------------------------------------------------------------
# The parser


def build_parser() -> argparse.ArgumentParser:
    """The `backworks` argument parser with every subcommand wired to its function."""
    parser = argparse.ArgumentParser(
        prog="backworks",
        description="Turn compiled plugins into HTTP APIs through a versioned C ABI.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server_commands(commands)
    _add_plugins_commands(commands)
    _add_new_commands(commands)
    return parser


def _add_server_commands(commands: argparse._SubParsersAction[Any]) -> None:
    serve = commands.add_parser("serve", help="serve the endpoints of a config file")
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="default: ./backworks.yaml if present"
    )
    serve.add_argument("--host", help="listen on this address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen on this port (overrides server.port)")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="server processes on the one port, each with its own plugins (default 1)",
    )
    serve.set_defaults(run=cmd_serve)

    validate = commands.add_parser("validate", help="check a config file and list its problems")
    validate.add_argument(
        "--config", type=Path, metavar="FILE", help="default: ./backworks.yaml if present"
    )
    validate.set_defaults(run=cmd_validate)


def _add_plugins_commands(commands: argparse._SubParsersAction[Any]) -> None:
    plugins = commands.add_parser("plugins", help="find and inspect plugin libraries")
    sub = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", help="list the plugins in the plugin folders")
    ls.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder to scan; repeatable (default: ./plugins, unless --config is given)",
    )
    ls.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="scan the folders of this config file's plugin_discovery section",
    )
    ls.add_argument("--recursive", action="store_true", help="scan subfolders too")
    ls.add_argument("--rescan", action="store_true", help="examine every file, ignore the cache")
    ls.add_argument(
        "--all", action="store_true", help="also show libraries that are not Backworks plugins"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per library examined")
    _add_examine_options(ls)
    ls.set_defaults(run=cmd_plugins_list)

    inspect = sub.add_parser("inspect", help="examine one library (always afresh)")
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.add_argument(
        "--init",
        action="store_true",
        help="also run the plugin's init (then shutdown) in a throwaway child process",
    )
    inspect.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="with --init: pass init the plugin's `config` from this config file",
    )
    _add_examine_options(inspect)
    inspect.set_defaults(run=cmd_plugins_inspect)


def _add_new_commands(commands: argparse._SubParsersAction[Any]) -> None:
    new = commands.add_parser("new", help="start a new project from a template")
    sub = new.add_subparsers(dest="new_command", metavar="COMMAND", required=True)
    plugin = sub.add_parser("plugin", help="write a buildable plugin project into DIR/NAME")
    plugin.add_argument("name", metavar="NAME", help="the plugin's name, [a-z0-9][a-z0-9_-]*")
    plugin.add_argument("--lang", required=True, choices=LANGUAGES, help="the language")
    plugin.add_argument(
        "--dir", type=Path, default=Path(), metavar="D", help="where to create NAME (default: .)"
    )
    plugin.set_defaults(run=cmd_new_plugin)


def _add_examine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=discovery.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"time allowed to load one library (default {discovery.DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--allow-insecure-permissions",
        action="store_true",
        help="load files that others may write (the config key allow_insecure_permissions)",
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        msg = f"must be a whole number of at least 1 (got {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        msg = f"must be a positive number of seconds (got {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return value


# ---------------------------------------------------------------------------
# Commands


def cmd_serve(args: argparse.Namespace) -> int:
    """`backworks serve`: exit 0 after a clean shutdown, 1 when the start fails."""
    from backworks.server.serve import serve  # the server stack loads only for this command

    bound = max_workers()
    if args.workers > bound:
        msg = (
            f"--workers {args.workers} is more than this machine can run usefully: at most "
            f"{bound} ({WORKERS_PER_CPU} per CPU, {bound // WORKERS_PER_CPU} CPUs usable)"
        )
        raise UsageError(msg)
    try:
        config, _ = _server_config(args)
    except ConfigError as e:
        print(f"backworks: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    config = with_listen_address(config, args.host, args.port)
    server = config.server
    # A reload reads the same file again, with the same --host/--port; started without
    # one, it reads ./backworks.yaml if it has appeared since, else the defaults.
    file = find_config(args.config, Path.cwd())
    source = ConfigSource(
        file or Path.cwd() / CONFIG_FILE, host=args.host, port=args.port, optional=file is None
    )
    configure_logging(config.logging.level, config.logging.format)
    if args.workers > 1:
        from backworks.server.arbiter import serve_workers

        serve_workers(config, args.workers, source)
        return EXIT_OK
    try:
        serve(config, source)
    except StartupError as e:
        structlog.get_logger("backworks.server").error("startup_failed", error=str(e))
        return EXIT_UNUSABLE
    except OSError as e:  # the port is taken, or the address is not ours
        structlog.get_logger("backworks.server").error(
            "startup_failed", error=f"cannot listen on {server.host}:{server.port}: {e.strerror}"
        )
        return EXIT_UNUSABLE
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """`backworks validate`: print every problem with its key path; exit 1 if any."""
    try:
        config, source = _server_config(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_UNUSABLE
    print(
        f"{source}: valid ({len(config.endpoints)} endpoints, "
        f"{len(config.plugins)} plugins configured)"
    )
    # Valid, but a route that can never match is a mistake worth a line of its own.
    for problem in shadowed_routes(config):
        print(f"warning: {problem}")
    return EXIT_OK


def cmd_plugins_list(args: argparse.Namespace) -> int:
    """`backworks plugins list`: exit 1 when a plugin is unusable; skipped files don't count."""
    directories: list[Path] = list(args.dirs)
    recursive: bool = args.recursive
    if args.config is not None:
        configured, configured_recursive = _discovery_settings(args.config)
        directories = configured + directories
        recursive = recursive or configured_recursive
    if not directories:
        directories = [DEFAULT_PLUGIN_DIR]
    for directory in directories:
        if not directory.is_dir():
            msg = f"plugin folder {str(directory)!r} does not exist"
            raise UsageError(msg)
    results = discovery.scan(
        directories,
        recursive=recursive,
        rescan=args.rescan,
        timeout_s=args.timeout,
        allow_insecure_permissions=args.allow_insecure_permissions,
    )
    if args.json:
        _print_json(results)
    else:
        _print_listing(results, [str(d) for d in directories], show_skipped=args.all)
    unusable = any(not r.ok and not r.skipped for r in results)
    return EXIT_UNUSABLE if unusable else EXIT_OK


def cmd_plugins_inspect(args: argparse.Namespace) -> int:
    """`backworks plugins inspect FILE`: exit 0 only when FILE is a usable plugin."""
    path: Path = args.file
    if not os.path.lexists(path):
        msg = f"{str(path)!r} does not exist"
        raise UsageError(msg)
    if args.config is not None and not args.init:
        msg = "--config is only read with --init"
        raise UsageError(msg)
    result = discovery.examine(
        path, timeout_s=args.timeout, allow_insecure_permissions=args.allow_insecure_permissions
    )
    init_error = _try_init(args, result) if args.init and result.ok else None
    if args.json:
        data = result.to_json()
        if args.init:
            data["init"] = "ok" if init_error is None else init_error
        print(json.dumps([data], indent=2))
    else:
        _print_details(result)
        if args.init and result.ok:
            print(f"init:        {'ok (then shutdown)' if init_error is None else init_error}")
    return EXIT_OK if result.ok and init_error is None else EXIT_UNUSABLE


def _try_init(args: argparse.Namespace, result: ScanResult) -> str | None:
    """Runs `init` of the examined plugin in a throwaway child; None, or what went wrong.

    The config given is the `config` of the plugin of that name in `--config`, else
    `{}`. A crash's output goes to stderr, the culprit named above it.
    """
    import asyncio

    from backworks.errors import BackworksError
    from backworks.isolation.probe import InitCrashError, try_init
    from backworks.plugins.loading import PluginSpec

    assert result.name is not None
    config_json = b"{}"
    if args.config is not None:
        if not args.config.is_file():
            msg = f"config file {str(args.config)!r} does not exist"
            raise UsageError(msg)
        plugin = load_config(args.config).plugins.get(result.name)
        if plugin is not None:
            config_json = plugin.config_json
    spec = PluginSpec(
        result.name,
        Path(result.path),
        config_json,
        allow_insecure_permissions=args.allow_insecure_permissions,
    )
    try:
        asyncio.run(try_init(spec, start_timeout_ms=round(args.timeout * 1000)))
    except InitCrashError as e:
        if e.dump:
            print(f"crash output of plugin {result.name!r}'s init:\n{e.dump}", file=sys.stderr)
        return f"crashed: {e.message}"
    except BackworksError as e:
        return f"failed: {e}"
    return None


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """`backworks new plugin NAME --lang rust|c [--dir D]`: writes D/NAME, says how to build."""
    folder: Path = args.dir / args.name
    try:
        made = create_plugin_project(args.name, args.lang, folder)
    except ScaffoldError as e:
        raise UsageError(str(e)) from e
    print(f"created {args.lang} plugin {args.name!r} in {folder}:")
    for file in made.files:
        print(f"  {file}")
    build = "cargo build --release" if args.lang == "rust" else "make"
    print(f"\nbuild it: cd {shlex.quote(str(folder))} && {build}  (README.md says more)")
    return EXIT_OK


# ---------------------------------------------------------------------------
# Output


def _print_json(results: Sequence[ScanResult]) -> None:
    print(json.dumps([r.to_json() for r in results], indent=2))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _print_listing(
    results: Sequence[ScanResult], folders: list[str], *, show_skipped: bool
) -> None:
    usable = [r for r in results if r.ok]
    unusable = [r for r in results if not r.ok and not r.skipped]
    skipped = [r for r in results if r.skipped]
    if usable:
        header = ("NAME", "VERSION", "ABI", "FLAGS", "PATH")
        rows = [
            (r.name or "", r.version or "-", r.abi or "-", ",".join(r.flags) or "-", r.path)
            for r in usable
        ]
        print("\n".join(_table([header, *rows])))
    if unusable:
        print("\nnot usable:" if usable else "not usable:")
        for r in unusable:
            print(f"  {r.path}: {r.error}")
    if skipped and show_skipped:
        print("\nskipped:" if usable or unusable else "skipped:")
        for r in skipped:
            print(f"  {r.path}: {r.error}")
    summary = f"{len(usable)} usable, {len(unusable)} not usable, {len(skipped)} skipped"
    if skipped and not show_skipped:
        summary += " (--all lists them)"
    if not results:
        summary = f"no libraries in {', '.join(folders)}"
    print(("\n" if usable or unusable or (skipped and show_skipped) else "") + summary)


def _print_details(r: ScanResult) -> None:
    fields = [("path", r.path)]
    if r.ok or r.name:
        fields += [
            ("name", r.name or ""),
            ("version", r.version or ""),
            ("description", r.description or ""),
            ("abi", r.abi or ""),
            ("flags", ", ".join(r.flags) or "-"),
        ]
    if r.error:
        fields.append(("error", r.error))
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")


# ---------------------------------------------------------------------------
# Config


def _discovery_settings(config_file: Path) -> tuple[list[Path], bool]:
    """`plugin_discovery.directories` (resolved against the file's folder) and `.recursive`."""
    if not config_file.is_file():
        msg = f"config file {str(config_file)!r} does not exist"
        raise UsageError(msg)
    discovery_config = load_config(config_file).discovery
    return list(discovery_config.directories), discovery_config.recursive


def _server_config(args: argparse.Namespace) -> tuple[Config, str]:
    """The config named by --config, else ./backworks.yaml, else the defaults."""
    explicit: Path | None = args.config
    if explicit is not None and not explicit.is_file():
        msg = f"config file {str(explicit)!r} does not exist"
        raise UsageError(msg)
    path = find_config(explicit, Path.cwd())
    if path is None:
        return default_config(Path.cwd()), "defaults (no backworks.yaml here)"
    return load_config(path), str(path)


# ---------------------------------------------------------------------------
# Entry point


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Looked up per logger, not once: whoever swapped sys.stderr (pytest) gets the lines.
    return structlog.PrintLogger(sys.stderr)


def _configure_logging() -> None:
    """Warnings to stderr; stdout carries the command's own output (`--json`)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def main(argv: list[str] | None = None) -> int:
    """The `backworks` command: parses `argv` and returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on a usage error and 0 after --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _configure_logging()
    try:
        code: int = args.run(args)
    except (UsageError, ConfigError) as e:
        print(f"backworks: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
