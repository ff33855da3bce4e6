"""Trust like sshd's StrictModes: owners and modes of a plugin and every folder above it.

Real C plugins compiled into tmp_path, each case built with os.chown and chmod, and
loaded by the real server (or by a real worker process); the checks run on the file
as opened, so a file swapped after its check is never the one copied and loaded.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from pathlib import Path
from typing import Protocol

import pytest

from backworks.errors import PluginLoadError
from backworks.http.aio.state import HOST
from backworks.isolation.probe import probe
from backworks.plugins.copies import LibraryCopies
from backworks.plugins.loading import PluginSpec, check_file, open_file
from tests.conftest import BuildPlugin
from tests.serving import KIT, Client, Serve

OTHER_UID = 4242  # no such user here: the message says `uid 4242`
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="os.chown to another user's uid needs root"
)


class MakeKit(Protocol):
    """The `make_kit` fixture: the test kit, as plugin "kit", compiled into `folder`."""

    def __call__(self, folder: Path, *, extra_flags: tuple[str, ...] = ()) -> Path: ...


@pytest.fixture
def make_kit(build_plugin: BuildPlugin) -> MakeKit:
    """`make_kit(folder, extra_flags=())`: the test kit as plugin "kit" in `folder`."""

    def build(folder: Path, *, extra_flags: tuple[str, ...] = ()) -> Path:
        path = build_plugin(KIT, "kit", folder, ('-DKIT_NAME="kit"', *extra_flags))
        path.chmod(0o755)  # whatever the umask
        return path

    return build


async def serve_from(serve: Serve, library: Path, **settings: object) -> Client:
    return await serve({"plugins": {"kit": {"path": str(library), **settings}}})


def load_error(client: Client) -> str:
    plugin = client.app[HOST].plugins["kit"]
    assert plugin.error is not None, f"kit was loaded ({plugin.state.value})"
    return plugin.error


def mode_of(path: Path) -> str:
    return stat.filemode(path.lstat().st_mode)


@needs_root
async def test_a_library_owned_by_another_user_is_refused_naming_it_its_owner_and_the_fix(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    library = make_kit(folder=tmp_path / "libs")
    os.chown(library, OTHER_UID, -1)
    client = await serve_from(serve, library)
    assert load_error(client) == (
        f"{library}: refused: the file is owned by another user ({library}: owner uid "
        f"{OTHER_UID}, mode {mode_of(library)}); a plugin and every folder above it must be "
        "owned by root or by the server's user (root (uid 0)): run "
        f"`chown root {library}`, or set allow_insecure_permissions: true"
    )
    assert (await client.get("/plugins/kit/echo")).status == 503


@needs_root
async def test_a_folder_above_owned_by_another_user_is_refused(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    library = make_kit(folder=tmp_path / "theirs" / "libs")
    os.chown(tmp_path / "theirs", OTHER_UID, -1)
    client = await serve_from(serve, library)
    error = load_error(client)
    assert f"a folder above it is owned by another user ({tmp_path / 'theirs'}: " in error
    assert f"`chown root {tmp_path / 'theirs'}`" in error


async def test_a_group_writable_folder_is_refused_naming_the_folder_and_the_fix(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    folder = tmp_path / "libs"
    library = make_kit(folder=folder)
    folder.chmod(0o775)
    client = await serve_from(serve, library)
    assert load_error(client) == (
        f"{library}: refused: its folder is writable by its group ({folder}: owner "
        f"{_me()}, mode drwxrwxr-x); run `chmod go-w {folder}`, or set "
        "allow_insecure_permissions: true"
    )


async def test_a_world_writable_folder_two_levels_up_is_refused_unless_allowed(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    outer = tmp_path / "outer"
    library = make_kit(folder=outer / "middle" / "libs")
    outer.chmod(0o777)
    client = await serve_from(serve, library)
    error = load_error(client)
    assert error.startswith(f"{library}: refused: a folder above it is writable by anyone ")
    assert f"({outer}: owner {_me()}, mode drwxrwxrwx)" in error
    assert f"run `chmod go-w {outer}`, or set allow_insecure_permissions: true" in error

    allowed = await serve_from(serve, library, allow_insecure_permissions=True)
    assert (await allowed.get("/plugins/kit/echo")).status == 200


async def test_a_sticky_world_writable_folder_holding_our_safe_folder_is_accepted(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    """Like /tmp: others may add entries there, but not rename or remove ours."""
    shared = tmp_path / "shared"
    library = make_kit(folder=shared / "libs")
    shared.chmod(0o1777)
    client = await serve_from(serve, library)
    assert (await client.get("/plugins/kit/echo")).status == 200


async def test_a_sticky_folder_does_not_excuse_a_writable_folder_below_it(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    library = make_kit(folder=shared / "libs")
    shared.chmod(0o1777)
    (shared / "libs").chmod(0o777)
    client = await serve_from(serve, library)
    assert "its folder is writable by anyone" in load_error(client)


@needs_root
async def test_in_a_sticky_folder_only_what_we_own_is_accepted(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    library = make_kit(folder=shared / "libs")
    shared.chmod(0o1777)
    os.chown(shared / "libs", OTHER_UID, -1)  # someone else's folder in /tmp
    client = await serve_from(serve, library)
    assert "a folder above it" not in load_error(client)
    assert f"its folder is owned by another user ({shared / 'libs'}: " in load_error(client)


async def test_a_link_to_a_library_is_checked_where_the_library_lies(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    """The name as written is a link in a safe folder; the file it leads to is not safe."""
    outer = tmp_path / "outer"
    library = make_kit(folder=outer / "libs")
    outer.chmod(0o777)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / library.name
    link.symlink_to(library)
    client = await serve_from(serve, link)
    assert f"a folder above it is writable by anyone ({outer}: " in load_error(client)


async def test_a_file_swapped_after_its_check_is_not_what_is_copied(
    make_kit: MakeKit, tmp_path: Path
) -> None:
    """The copy reads the descriptor that was checked, not the name again."""
    library = make_kit(folder=tmp_path / "libs")
    checked = hashlib.sha256(library.read_bytes()).hexdigest()
    evil = make_kit(folder=tmp_path / "evil", extra_flags=("-DKIT_VERSION=666",))
    copies = LibraryCopies()
    try:
        with open_file(PluginSpec("kit", library)) as opened:
            evil.replace(library)  # the swap, between the check and the copy
            copy = copies.copy(opened)
        assert copy.sha256 == checked
        assert hashlib.sha256(copy.path.read_bytes()).hexdigest() == checked
        assert hashlib.sha256(library.read_bytes()).hexdigest() != checked
    finally:
        copies.close()


async def test_a_library_swapped_against_its_pin_is_refused_and_the_old_one_serves(
    serve: Serve, make_kit: MakeKit, tmp_path: Path
) -> None:
    """In a folder others may write (allowed), only the pin holds: it is checked against
    the bytes copied, so a swap between the scan or check and the load fails closed."""
    folder = tmp_path / "libs"
    library = make_kit(folder=folder)
    pin = hashlib.sha256(library.read_bytes()).hexdigest()
    folder.chmod(0o777)
    token = "trust-token"
    client = await serve(
        {
            "plugins": {
                "kit": {"path": str(library), "allow_insecure_permissions": True, "sha256": pin}
            },
            "admin": {"token": token},
        }
    )
    assert (await client.get("/plugins/kit/version")).status == 200
    evil = make_kit(folder=tmp_path / "evil", extra_flags=("-DKIT_VERSION=666",))
    evil.replace(library)
    resp = await client.post(
        "/_backworks/plugins/kit/reload", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 502
    assert f"refused: sha256 is {hashlib.sha256(library.read_bytes()).hexdigest()}" in (
        await resp.text()
    )
    version = await (await client.get("/plugins/kit/version")).json()
    assert version["build"] == 0, "the checked version keeps serving"


def test_a_private_copy_lies_in_a_folder_chain_the_checks_accept(
    make_kit: MakeKit, tmp_path: Path
) -> None:
    library = make_kit(folder=tmp_path / "libs")
    copies = LibraryCopies()
    try:
        with open_file(PluginSpec("kit", library)) as opened:
            copy = copies.copy(opened)
        assert stat.S_IMODE(copy.path.parent.stat().st_mode) == 0o700
        check_file(PluginSpec("kit", copy.path, sha256=copy.sha256))  # strict: no raise
    finally:
        copies.close()


async def test_a_worker_process_checks_the_file_it_loads_itself(
    make_kit: MakeKit, tmp_path: Path
) -> None:
    """`isolation: process`: the worker re-checks the (private) copy before loading it."""
    outer = tmp_path / "outer"
    library = make_kit(folder=outer / "libs")
    outer.chmod(0o777)
    with pytest.raises(PluginLoadError, match=r"refused: a folder above it is writable by anyone"):
        await probe(PluginSpec("kit", library))
    info = await probe(PluginSpec("kit", library, allow_insecure_permissions=True))
    assert info.name == "kit"
    pin = "0" * 64
    with pytest.raises(PluginLoadError, match=r"refused: sha256 is [0-9a-f]{64}, but the config"):
        await probe(PluginSpec("kit", library, allow_insecure_permissions=True, sha256=pin))


def _me() -> str:
    """How the messages name the server's user (the owner of what the tests create)."""
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
