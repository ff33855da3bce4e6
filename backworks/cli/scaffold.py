"""`backworks new plugin`: a buildable plugin project from the templates in templates/.

A template is a file whose `@key@` placeholders are filled in; the project's names are
derived from the plugin name, which must be a valid plugin name. A Rust project
depends on the Rust SDK by absolute path: the checkout's (an editable install) or the
copy inside the installed package (the wheel ships it); the crate is published to no
registry, so a manifest never names it by version. A C project's Makefile points `-I`
at this installation's headers.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import attrs

from backworks.abi import include_dir
from backworks.names import invalid_name_reason
from backworks.spawn import package_root

__all__ = ["LANGUAGES", "Scaffold", "ScaffoldError", "create_plugin_project", "sdk_crate_dir"]

# template file -> path in the project ({name} is the plugin name)
_FILES: dict[str, dict[str, str]] = {
    "rust": {
        "Cargo.toml.tmpl": "Cargo.toml",
        "lib.rs.tmpl": "src/lib.rs",
        "README.md.tmpl": "README.md",
        "gitignore.tmpl": ".gitignore",
    },
    "c": {
        "plugin.c.tmpl": "{name}.c",
        "Makefile.tmpl": "Makefile",
        "README.md.tmpl": "README.md",
        "gitignore.tmpl": ".gitignore",
    },
}
LANGUAGES = tuple(_FILES)
_PLACEHOLDER = re.compile(r"@([a-z_]+)@")


class ScaffoldError(Exception):
    """The project cannot be made as asked (a bad name, a folder in the way)."""


@attrs.frozen
class Scaffold:
    """A project written to disk: where, and the files it holds (relative paths)."""

    folder: Path
    language: str
    files: tuple[str, ...]


_SDK_CRATE = ("sdk-rust", "backworks-plugin-sdk")


def sdk_crate_dir() -> Path | None:
    """The Rust SDK crate of this installation: the checkout's for a checkout or an
    editable install, else the copy the wheel ships inside the package; None if neither
    is there (a damaged installation)."""
    for crate in (
        Path(package_root()).joinpath(*_SDK_CRATE),
        Path(str(resources.files("backworks"))).joinpath(*_SDK_CRATE),
    ):
        if (crate / "Cargo.toml").is_file():
            return crate.resolve()
    return None


def _sdk_dependency() -> str:
    crate = sdk_crate_dir()
    if crate is None:
        msg = (
            "the Backworks Rust SDK is missing from this installation (looked for "
            f"{'/'.join(_SDK_CRATE)} beside and inside the backworks package): "
            "reinstall backworks"
        )
        raise ScaffoldError(msg)
    # A TOML basic string has JSON's escapes, so any path survives json.dumps.
    return f"backworks-plugin-sdk = {{ path = {json.dumps(crate.as_posix())} }}"


def _crate_name(name: str) -> str:
    """`weather` -> `weather-plugin`: clear of Rust's reserved crate names (`test`,
    `std`); cargo also refuses a name that starts with a digit."""
    crate = name if re.search(r"[-_]plugin$", name) else f"{name}-plugin"
    return crate if crate[0].isalpha() else f"bw-{crate}"


def _struct_name(name: str) -> str:
    """`my-weather` -> `MyWeatherPlugin`; a type name cannot start with a digit."""
    pascal = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]+", name))
    if pascal[0].isdigit():
        return f"Plugin{pascal}"
    return pascal if pascal.endswith("Plugin") else f"{pascal}Plugin"


def _values(name: str, language: str) -> dict[str, str]:
    values = {"name": name}
    if language == "rust":
        crate = _crate_name(name)
        values |= {
            "crate_name": crate,
            "lib_name": crate.replace("-", "_"),
            "struct_name": _struct_name(name),
            "sdk_dependency": _sdk_dependency(),
        }
    else:
        values["include_dir"] = include_dir().resolve().as_posix()
    return values


def _render(template: str, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        key = match[1]
        if key not in values:
            msg = f"template placeholder @{key}@ has no value"
            raise KeyError(msg)
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


def create_plugin_project(name: str, language: str, folder: Path) -> Scaffold:
    """Writes a plugin project for `name` in `language` into `folder`.

    Raises ScaffoldError for an invalid plugin name, an unknown language, or a
    `folder` that exists and is not an empty folder; nothing is written then.
    """
    if (why := invalid_name_reason(name)) is not None:
        raise ScaffoldError(why)
    if language not in _FILES:
        msg = f"language must be one of {', '.join(LANGUAGES)} (got {language!r})"
        raise ScaffoldError(msg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "folder is not empty" if folder.is_dir() else "path exists and is not a folder"
        msg = f"cannot create the project in {str(folder)!r}: the {what}"
        raise ScaffoldError(msg)
    values = _values(name, language)
    templates = resources.files("backworks") / "templates" / language
    written = []
    for template, target in _FILES[language].items():
        relative = target.format(name=name)
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render((templates / template).read_text("utf-8"), values), "utf-8")
        written.append(relative)
    return Scaffold(folder, language, tuple(written))
