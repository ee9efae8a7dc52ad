"""The systemd units verify cleanly, score as hardened, and agree with each other on paths.

Nothing here starts systemd or runs systemd-tmpfiles: `systemd-analyze verify` and
`security --offline=yes` only read unit files, and `systemd-sysusers --dry-run --root=TMP`
only prints what it would do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
SYSUSERS = shutil.which("systemd-sysusers")
MAX_EXPOSURE = 2.0  # systemd-analyze's 0-10 scale; <= 2.0 is rated "OK"
RUN_TIMEOUT = 60  # seconds per systemd-analyze call
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

Sections = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Sections:
    """Sections -> key -> every assignment in order (units repeat keys such as LoadCredential)."""
    sections: Sections = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> Sections:
    return parse_unit((UNITS / name).read_text())


def staged_units(tmp_path: Path) -> Path:
    """Copy the units and the drop-in to tmp_path, pointing every ExecStart at a real script.

    verify fails on a missing ExecStart binary, and /usr/bin/kiln does not exist on a build
    host; swapping in an executable keeps every other check meaningful.
    """
    exe = tmp_path / "kiln"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    dest = tmp_path / "units"
    shutil.copytree(UNITS, dest)
    for path in [dest / "kiln.service", *dest.glob("kiln.service.d/*.conf")]:
        text = re.sub(
            r"^(ExecStart=)\S*/kiln\b", rf"\g<1>{exe}", path.read_text(), flags=re.MULTILINE
        )
        path.write_text(text)
    return dest


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


@needs_analyze
def test_units_and_drop_in_verify_without_any_output(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the service (with its drop-in) and socket silently."""
    dest = staged_units(tmp_path)
    assert "ExecStart=" in (dest / "kiln.service.d" / "example.conf").read_text()
    result = analyze("verify", "--man=no", "kiln.service", "kiln.socket", cwd=dest)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """Control: verify reports an unknown key in the drop-in, so the clean run means something."""
    dest = staged_units(tmp_path)
    drop_in = dest / "kiln.service.d" / "example.conf"
    drop_in.write_text(drop_in.read_text() + "WatchdogSecs=30s\n")
    result = analyze("verify", "--man=no", "kiln.service", cwd=dest)
    assert "Unknown key 'WatchdogSecs'" in result.stdout + result.stderr


@needs_analyze
def test_service_exposure_score_is_ok(tmp_path: Path) -> None:
    """systemd-analyze security --offline rates the service at or below MAX_EXPOSURE."""
    dest = staged_units(tmp_path)
    shutil.rmtree(dest / "kiln.service.d")  # score the shipped unit, not the example
    result = analyze("security", "--offline=yes", "--no-pager", "kiln.service", cwd=dest)
    match = re.search(r"Overall exposure level for kiln\.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert match.group(2) == "OK"


def test_service_contract_settings() -> None:
    """The service keeps the settings the daemon's code relies on (notify, watchdog, paths)."""
    service = unit("kiln.service")["Service"]
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30s"],
        "TimeoutStopSec": ["45s"],
        "Restart": ["on-failure"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "User": ["claykiln"],
        "Group": ["claykiln"],
        "StateDirectory": ["claykiln"],
        "RuntimeDirectory": ["claykiln"],
        "RuntimeDirectoryPreserve": ["yes"],
        "UMask": ["0007"],
        "MemoryDenyWriteExecute": ["yes"],
        "CapabilityBoundingSet": [""],
    }
    assert {k: service.get(k) for k in expected} == expected
    assert service["ExecStart"] == ["/usr/bin/kiln serve --config /etc/claykiln/kiln.toml"]
    assert "PrivateUsers" not in service  # would hide client uids from SO_PEERCRED checks


def test_socket_tmpfiles_and_credentials_agree() -> None:
    """kiln.socket, tmpfiles and the service name the same directories and credential files."""
    socket_unit = unit("kiln.socket")["Socket"]
    service = unit("kiln.service")["Service"]
    assert socket_unit["ListenStream"] == ["/run/claykiln/kiln.sock"]
    assert socket_unit["SocketMode"] == ["0660"]
    assert (socket_unit["SocketUser"], socket_unit["SocketGroup"]) == (
        ["claykiln"],
        ["claykiln-clients"],
    )
    tmpfiles = {
        fields[1]: fields
        for line in (UNITS / "claykiln.tmpfiles.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for fields in [line.split()]
    }
    for fields in tmpfiles.values():
        assert len(fields) == 7 and fields[0] == "d" and re.fullmatch(r"0[0-7]{3}", fields[2])
    assert tmpfiles["/run/claykiln"][3:5] == ["claykiln", "claykiln"]
    assert tmpfiles["/var/lib/claykiln"][2:5] == ["0700", "claykiln", "claykiln"]
    assert tmpfiles["/etc/claykiln/credentials"][2] == "0700"
    credentials = dict(value.split(":", 1) for value in service["LoadCredential"])
    assert set(credentials) == {"clay-api-key", "clay-webhook-token"}
    for path in credentials.values():
        assert Path(path).parent == Path("/etc/claykiln/credentials")


@pytest.mark.skipif(SYSUSERS is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_creates_user_and_groups(tmp_path: Path) -> None:
    """A dry run of the sysusers snippet (in an empty root) creates the user and both groups."""
    assert SYSUSERS is not None
    result = subprocess.run(
        [SYSUSERS, "--dry-run", f"--root={tmp_path}", str(UNITS / "claykiln.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating user 'claykiln'" in output
    for group in ("claykiln-clients", "claykiln-admins"):
        assert f"Creating group '{group}'" in output
    assert list(tmp_path.iterdir()) == []  # dry run: nothing written


MDWE_PROBE = """
import ctypes, mmap, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("unsupported:", os.strerror(ctypes.get_errno()))
    sys.exit(3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: the probe is not enforcing")
except OSError:
    pass
import ssl
import attrs, click, httpx, hypercorn, lmdb, msgpack, rich, structlog, trio
import claykiln.daemon.logs, claykiln.daemon.sdnotify
env = lmdb.open(tempfile.mkdtemp(), map_size=1 << 20)
with env.begin(write=True) as txn:
    txn.put(b"k", msgpack.packb({"a": 1}))
async def main():
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(trio.sleep, 0)
    await trio.to_thread.run_sync(env.sync, True)
trio.run(main)
ssl.create_default_context()
print("ok")
"""


def test_python_stack_runs_with_memory_deny_write_execute() -> None:
    """The daemon's imports, trio, LMDB and TLS setup work when W+X memory is refused.

    kiln.service sets MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE gives a process the
    same refusal without systemd, so a regression (say, a JIT-using dependency) shows up here.
    """
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if result.returncode == 3:
        pytest.skip(f"kernel has no PR_SET_MDWE (Linux >= 6.3): {result.stdout.strip()}")
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
