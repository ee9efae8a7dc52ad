"""Packaging: the wheel maps daemon/, actors/, storage/ to claykiln.* and ships its data files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_three_packages_and_imports(tmp_path: Path) -> None:
    """A built wheel holds claykiln.{daemon,actors,storage}, py.typed, default.toml, kiln."""
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


def test_editable_install_resolves_to_the_source_tree() -> None:
    """The editable install maps claykiln.storage onto the top-level storage/ folder."""
    import claykiln.storage

    assert Path(claykiln.storage.__file__).resolve().parent == ROOT / "storage"
