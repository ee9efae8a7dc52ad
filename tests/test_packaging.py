"""Packaging: the wheel maps daemon/, actors/, storage/ to claykiln.* and ships its data files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_FILES = (
    "kiln.service",
    "kiln.socket",
    "claykiln.sysusers.conf",
    "claykiln.tmpfiles.conf",
    "kiln.service.d/example.conf",
)
# Where `kiln systemd install` puts each shipped file under its prefix (docs/operations.md).
INSTALLED = {
    "kiln.service": "etc/systemd/system/kiln.service",
    "kiln.socket": "etc/systemd/system/kiln.socket",
    "claykiln.sysusers.conf": "usr/lib/sysusers.d/claykiln.conf",
    "claykiln.tmpfiles.conf": "usr/lib/tmpfiles.d/claykiln.conf",
}


def test_wheel_contains_the_three_packages_and_imports(tmp_path: Path) -> None:
    """A built wheel holds claykiln.{daemon,actors,storage}, py.typed, default.toml, kiln and
    the systemd units, and the unpacked wheel imports and installs its units on its own."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("claykiln-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "kiln = claykiln.daemon.cli:main" in zf.read(entry_points).decode()
        zf.extractall(tmp_path / "site")
    for pkg in ("daemon", "actors", "storage"):
        assert f"claykiln/{pkg}/__init__.py" in names
        assert f"claykiln/{pkg}/py.typed" in names
    assert "claykiln/daemon/config/default.toml" in names
    assert "claykiln/daemon/simulator/__init__.py" in names
    for unit in SYSTEMD_FILES:
        assert f"claykiln/daemon/systemd/{unit}" in names, unit
    assert not any(n.startswith(("daemon/", "actors/", "storage/", "tests/")) for n in names)
    # Every package of the source tree is in the wheel (a room missing from pyproject.toml's
    # package list would install a daemon that fails on import).
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        top = init.relative_to(ROOT).parts[0]
        if top in ("daemon", "actors", "storage"):
            wheel_path = "claykiln/" + init.relative_to(ROOT).as_posix()
            assert wheel_path in names, f"{wheel_path} missing: add it to pyproject.toml packages"
    # The unpacked wheel imports on its own (dependencies from this environment).
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    code = (
        "import claykiln.daemon, claykiln.actors, claykiln.storage, claykiln.daemon.config as c;"
        "import claykiln.daemon.app, claykiln.daemon.cli;"
        "print(claykiln.storage.__file__);"
        "print(c.load_config(None).operations['push_row'].path)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith(str(tmp_path / "site"))
    assert second == "/v3/sources/webhook/{webhook_id}"
    _systemd_install_from_the_wheel(tmp_path, env)


def _kiln(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claykiln.daemon", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _systemd_install_from_the_wheel(tmp_path: Path, env: dict[str, str]) -> None:
    """kiln systemd install --prefix (from the unpacked wheel) writes the shipped units, the
    snippets and an ExecStart= drop-in for this kiln; it keeps edited files unless --force."""
    root = tmp_path / "root"
    done = _kiln(env, "systemd", "install", "--prefix", str(root))
    assert done.returncode == 0, done.stderr
    for name, target in INSTALLED.items():
        assert (root / target).read_text() == (ROOT / "systemd" / name).read_text(), target
    drop_in = (root / "etc/systemd/system/kiln.service.d/10-exec.conf").read_text()
    kiln = Path(sys.executable).absolute().parent / "kiln"
    assert f"ExecStart=\nExecStart={kiln} serve --config /etc/claykiln/kiln.toml\n" in drop_in
    assert "systemctl daemon-reload" in done.stdout  # printed as a next step, never run
    again = _kiln(env, "systemd", "install", "--prefix", str(root))
    assert again.returncode == 0 and again.stdout.count("unchanged") == 5, again.stdout
    edited = root / INSTALLED["kiln.socket"]
    edited.write_text(edited.read_text() + "# local edit\n")
    kept = _kiln(env, "systemd", "install", "--prefix", str(root))
    assert kept.returncode == 1
    assert f"kept       {edited}" in kept.stdout
    assert edited.read_text().endswith("# local edit\n")
    forced = _kiln(env, "systemd", "install", "--prefix", str(root), "--force")
    assert forced.returncode == 0, forced.stderr
    assert edited.read_text() == (ROOT / "systemd" / "kiln.socket").read_text()
    dry = _kiln(env, "systemd", "install", "--prefix", str(tmp_path / "dry"), "--dry-run")
    assert dry.returncode == 0 and "would write" in dry.stdout
    assert not (tmp_path / "dry").exists()
    example = _kiln(env, "systemd", "show", "kiln.service.d/example.conf")
    assert example.stdout == (ROOT / "systemd/kiln.service.d/example.conf").read_text()


def test_editable_install_resolves_to_the_source_tree() -> None:
    """The editable install maps claykiln.storage onto the top-level storage/ folder."""
    import claykiln.storage

    assert Path(claykiln.storage.__file__).resolve().parent == ROOT / "storage"
