"""Names are data; the directory is private; planted symlinks are refused."""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path

import pytest

import interlock
from interlock.backends.file import FileBackend, _paths

WEIRD = [
    "../x", "../../etc/passwd", "/", ".", "..", "a/b", "~", "-rf", "x" * 512, " ", "\n", "a\\b",
    "é", unicodedata.normalize("NFD", "é"), "A", "a", "Ä", "ä", "ß", "ss", "🔒", "\udc80", "names", "procs",
]


def test_any_name_works_and_no_two_names_collide(url: str) -> None:
    leases = [interlock.Lock(n, url=url).acquire(blocking=False) for n in WEIRD]  # all held at once
    root = Path(url[len("file://"):])
    files = sorted(p.name for p in (root / "names").iterdir())
    assert len(files) == len(WEIRD), "one state file per distinct name, nothing else"
    assert all(f.endswith(".state") and len(f) == 46 for f in files)
    assert sorted(p.name for p in root.iterdir()) == ["names", "procs"], "nothing escaped the directory"
    names = [s.name for s in interlock.status(url)]
    assert sorted(names) == sorted(WEIRD), "status shows the exact names"
    for lease in leases:
        lease.release()


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 513])
def test_bad_names_fail_before_any_io(url: str, bad: str) -> None:
    with pytest.raises((interlock.InvalidArgument, interlock.InvalidArgumentType)):
        interlock.Lock(bad, url=url)
    assert not os.path.exists(url[len("file://"):] + "/names") or not os.listdir(url[len("file://"):] + "/names")


@pytest.mark.parametrize("bad", ["file://user:hunter2@host/x", "file://relative/dir", "file:///x?key=hunter2",
                                 "file:///a%00b", "file:///%ff"])
def test_bad_urls_fail_before_any_io_without_echoing_secrets(bad: str) -> None:
    with pytest.raises(interlock.InvalidArgument) as ei:
        FileBackend(bad)
    assert "hunter2" not in str(ei.value)


def test_a_symlink_planted_at_a_lock_path_is_refused(url: str, tmp_path: Path) -> None:
    interlock.Lock("warmup", url=url)  # creates the directory
    victim = tmp_path / "victim"
    victim.write_text("precious")
    root = Path(url[len("file://"):])
    (root / "names" / _paths.name_file("orders")).symlink_to(victim)
    with pytest.raises(interlock.BackendError, match="symlink"):
        interlock.Lock("orders", url=url)
    assert victim.read_text() == "precious"


def test_a_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "names").symlink_to(elsewhere)
    with pytest.raises(interlock.BackendError, match="symlink"):
        FileBackend(f"file://{root}")
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_planted_at_a_lock_path_is_refused(url: str) -> None:
    interlock.Lock("warmup", url=url)
    os.mkfifo(Path(url[len("file://"):]) / "names" / _paths.name_file("fifo"))
    with pytest.raises(interlock.BackendError):
        interlock.Lock("fifo", url=url)


class TestDefaultDirectory:
    @pytest.fixture
    def default(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        d = tmp_path / "interlock-default"
        monkeypatch.setattr(_paths, "default_dir", lambda: str(d))
        return d

    def test_created_private(self, default: Path) -> None:
        b = FileBackend("file://")
        assert b.path == str(default)
        assert stat.S_IMODE(default.stat().st_mode) == 0o700
        with interlock.Lock("x", backend=b):
            pass

    def test_too_open_permissions_are_fixed(self, default: Path) -> None:
        default.mkdir(mode=0o777)
        os.chmod(default, 0o777)
        FileBackend("file://")
        assert stat.S_IMODE(default.stat().st_mode) == 0o700

    def test_symlink_refused(self, default: Path, tmp_path: Path) -> None:
        (tmp_path / "bait").mkdir()
        default.symlink_to(tmp_path / "bait")
        with pytest.raises(interlock.BackendError, match="symlink"):
            FileBackend("file://")

    def test_not_a_directory_refused(self, default: Path) -> None:
        default.write_text("")
        with pytest.raises(interlock.BackendError):
            FileBackend("file://")

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
    def test_owned_by_someone_else_refused(self, default: Path) -> None:
        default.mkdir(mode=0o700)
        os.chown(default, 65534, 65534)
        with pytest.raises(interlock.BackendError, match="belongs to uid 65534"):
            FileBackend("file://")
