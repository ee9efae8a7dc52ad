"""The docs run: every command block of README.md, and of operations.md's simulator recipe,
runs in a temporary directory and exits 0, so the docs cannot drift from the program.

A document's blocks run in order, as one reader would type them: ``sh`` blocks in bash
(``set -euo pipefail``), ``python`` blocks in this interpreter, each in the same directory and
with the environment the blocks before it exported. The virtual environment's ``bin`` comes
first on PATH (``kiln``, ``python``); HOME and the XDG directories point into the temporary
directory; port 8787 becomes a free port. Processes a block leaves running (``kiln serve &``,
a ``--detach``ed simulator) are stopped by id at the end.

A block that cannot run here says so on the line before its fence, with the reason:
``<!-- docs-test: skip: REASON -->``. Keep that list short (``MAX_SKIPPED``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Which blocks of which document run: all of README.md, one section of operations.md.
DOCUMENTS = {
    "README.md": None,
    "docs/operations.md": "## Try it against the simulator",
}
RUN_LANGUAGES = ("sh", "python")
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>.+?)\s*-->")
MAX_SKIPPED = 2  # README's two install one-liners (they need PyPI)
BLOCK_TIMEOUT = 60.0  # seconds one block may take (a daemon starting on a busy machine)
DOC_PORT = "8787"


@attrs.frozen
class Block:
    """One fenced code block: its language, text, first line number and skip reason."""

    language: str
    text: str
    line: int
    skip: str | None = None


def blocks(path: Path, section: str | None) -> list[Block]:
    """The fenced blocks of ``path`` (only under the heading ``section`` when given)."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    inside = section is None
    fence: str | None = None
    body: list[str] = []
    start = 0
    skip: str | None = None
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.startswith("```"):
                out.append(Block(fence, "\n".join(body) + "\n", start, skip))
                fence, body, skip = None, [], None
            else:
                body.append(line)
            continue
        if section is not None and line.startswith("## "):
            inside = line.strip() == section
        if not inside:
            continue
        mark = SKIP_MARK.search(line)
        if mark:
            skip = mark.group("reason")
        elif line.startswith("```"):
            fence, start = line[3:].strip(), number + 1
        elif line.strip():
            skip = None  # a mark applies to the block right after it
    return out


def runnable(path: Path, section: str | None) -> list[Block]:
    return [b for b in blocks(path, section) if b.language in RUN_LANGUAGES]


def test_the_documents_have_the_blocks_this_test_runs() -> None:
    """Each document has command blocks here, and few are marked to skip, each with a reason."""
    skipped = []
    for name, section in DOCUMENTS.items():
        found = runnable(ROOT / name, section)
        assert any(b.skip is None and b.language == "sh" for b in found), name
        skipped += [f"{name}:{b.line}: {b.skip}" for b in found if b.skip is not None]
    assert len(skipped) <= MAX_SKIPPED, skipped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in path.read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="surrogateescape").partition("=")
        if sep and key:
            out[key] = value
    return out


class Session:
    """One reader's terminal: a directory, an environment carried from block to block, and the
    process groups (and detached simulators) to stop at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = str(_free_port())
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "XDG_"))}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(workdir / "home"),
            XDG_RUNTIME_DIR=str(workdir / "run"),
            XDG_STATE_HOME=str(workdir / "state"),
        )
        for key in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY"):
            env.pop(key, None)
        (workdir / "home").mkdir()
        (workdir / "run").mkdir(mode=0o700)
        self.env = env
        self.groups: list[int] = []
        self.count = 0

    def run(self, block: Block) -> subprocess.CompletedProcess[bytes]:
        """Run ``block`` to its end (its background children live on); never raises on exit."""
        self.count += 1
        out = self.workdir / f"block{self.count}.out"
        err = self.workdir / f"block{self.count}.err"
        text = block.text.replace(DOC_PORT, self.port)
        env_file = self.workdir / f"block{self.count}.env"
        if block.language == "python":
            command = [sys.executable, "-c", text]
        else:
            script = f"set -euo pipefail\n{text}\nenv -0 > {env_file}\n"
            command = ["bash", "-c", script]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its background jobs share this group: stopped later
            )
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = -1
        if env_file.exists():
            self.env = _read_env(env_file)
        return subprocess.CompletedProcess(command, code, out.read_bytes(), err.read_bytes())

    def close(self) -> None:
        """Stop what the blocks left running: their process groups, detached simulators."""
        pids = [int(p.read_text()) for p in self.workdir.glob("**/simulator.pid")]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM:
                time.sleep(1.0)  # a daemon's graceful stop


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short, so the daemon's socket path stays under the kernel's 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="kiln-docs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_command_block_runs(name: str, workdir: Path) -> None:
    """Each runnable block of the document exits 0, in order, in one session."""
    todo = [b for b in runnable(ROOT / name, DOCUMENTS[name]) if b.skip is None]
    needs = {tool for b in todo for tool in ("curl", "jq") if re.search(rf"\b{tool}\b", b.text)}
    missing = sorted(tool for tool in needs if shutil.which(tool) is None)
    if missing:
        pytest.skip(f"{name} uses {', '.join(missing)}, not installed here")
    session = Session(workdir)
    try:
        for block in todo:
            done = session.run(block)
            assert done.returncode == 0, (
                f"{name}, the {block.language} block at line {block.line} exited "
                f"{done.returncode}:\n{block.text}\n--- stdout\n"
                f"{done.stdout.decode(errors='replace')[-3000:]}\n--- stderr\n"
                f"{done.stderr.decode(errors='replace')[-3000:]}"
            )
    finally:
        session.close()
