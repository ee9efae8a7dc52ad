"""The processes ``kiln bench`` runs: the daemon, the bare echo server, the simulator, nginx.

Every one is a separate OS process on loopback or a Unix socket under a temp directory, started
with a bounded readiness wait and stopped with SIGTERM (then SIGKILL after ``STOP_TIMEOUT``).
Each class is a context manager; leaving it stops the process, whatever happened inside.

- ``DaemonProcess``: ``python -m claykiln.daemon serve --config F --socket S --state-dir D``,
  ready when it sends ``READY=1`` to the ``NOTIFY_SOCKET`` we bind (as systemd would see it).
- ``EchoProcess``: ``python -m claykiln.daemon.bench.echo``, ready when it prints ``READY``.
- ``SimulatorProcess``: ``python -m claykiln.daemon.simulator --port 0 --port-file F``, steered
  over its ``/_sim/`` HTTP endpoints (stdlib ``urllib``: only actors/ may import httpx).
- ``NginxProcess``: ``nginx`` with a temp config answering ``200 {"ok":true}`` on 127.0.0.1,
  when an nginx binary is installed (``find_nginx``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

__all__ = [
    "DaemonProcess",
    "EchoProcess",
    "NginxProcess",
    "SimulatorProcess",
    "cpu_seconds",
    "find_nginx",
    "free_port",
]

READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 20.0
CONTROL_TIMEOUT: Final = 10.0
NGINX_CANDIDATES: Final = (
    "/usr/sbin/nginx",
    "/usr/local/sbin/nginx",
    "/usr/local/nginx/sbin/nginx",
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (Linux ``/proc``; 0.0 if unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_nginx() -> str | None:
    """The path of an installed nginx binary, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


class _Process:
    """A child process with a log file and a bounded stop."""

    name = "process"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", log), stderr=log, env=env)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            msg = f"{self.name} exited {self.proc.returncode} before it was ready; log:\n"
            raise RuntimeError(msg + self.log_text()[-4000:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DaemonProcess(_Process):
    """A real ``kiln serve`` on ``root``/kiln.sock with state in ``root``/state."""

    name = "daemon"

    def __init__(self, root: Path, config_text: str, credentials: dict[str, str]) -> None:
        super().__init__(root)
        self.socket = root / "kiln.sock"
        self.state_dir = root / "state"
        self.config_path = root / "kiln.toml"
        self.config_path.write_text(config_text)
        self.creds = root / "creds"
        self.creds.mkdir(exist_ok=True)
        for name, value in credentials.items():
            (self.creds / name).write_text(value + "\n")

    def start(self) -> DaemonProcess:
        notify_path = self.root / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(str(notify_path))
            notify.settimeout(0.1)
            env = dict(os.environ)
            env.pop("KILN_SOCKET", None)
            env["NOTIFY_SOCKET"] = str(notify_path)
            env["CREDENTIALS_DIRECTORY"] = str(self.creds)
            cmd = [sys.executable, "-m", "claykiln.daemon", "serve", "--config"]
            cmd += [str(self.config_path), "--socket", str(self.socket)]
            cmd += ["--state-dir", str(self.state_dir)]
            self._spawn(cmd, env)
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if b"READY=1" in notify.recv(4096):
                        return self
                except TimeoutError:
                    continue
        finally:
            notify.close()
        self.stop()
        msg = f"the daemon was not READY within {READY_TIMEOUT}s; log:\n{self.log_text()[-4000:]}"
        raise RuntimeError(msg)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines whose event is ``name``."""
        out = []
        for line in self.log_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("event") == name:
                out.append(item)
        return out


class EchoProcess(_Process):
    """The bare trio msgpack server of ``daemon/bench/echo.py`` on ``root``/echo.sock."""

    name = "echo"

    def __init__(self, root: Path, reply: Any) -> None:
        super().__init__(root)
        self.socket = root / "echo.sock"
        self.reply = reply

    def start(self) -> EchoProcess:
        cmd = [sys.executable, "-m", "claykiln.daemon.bench.echo", "--socket", str(self.socket)]
        cmd += ["--reply-json", json.dumps(self.reply)]
        self._spawn(cmd, stdout=subprocess.PIPE)
        assert self.proc is not None and self.proc.stdout is not None
        line = _readline_within(self.proc.stdout, READY_TIMEOUT)
        if line.strip() != b"READY":
            self.stop()
            msg = f"the echo server did not start: {line!r}; log:\n{self.log_text()[-4000:]}"
            raise RuntimeError(msg)
        return self


def _readline_within(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's pipe, or b"" when none comes within ``timeout``."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return stream.readline()


class SimulatorProcess(_Process):
    """The Clay simulator as its own process on 127.0.0.1; ``control`` steers it."""

    name = "simulator"

    def __init__(self, root: Path, *extra_args: str) -> None:
        super().__init__(root)
        self.port_file = root / "sim.port"
        self.extra_args = list(extra_args)
        self.url = ""

    def start(self) -> SimulatorProcess:
        cmd = [sys.executable, "-m", "claykiln.daemon.simulator", "--port", "0"]
        cmd += ["--port-file", str(self.port_file), *self.extra_args]
        self._spawn(cmd)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.port_file.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                self.stop()
                msg = f"the simulator did not listen within {READY_TIMEOUT}s"
                raise RuntimeError(msg)
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(self.port_file.read_text())}"
        return self

    def control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One ``/_sim/`` request (``path`` below it, e.g. ``"faults"``); the JSON answer."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}/_sim/{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as response:
            return json.loads(response.read())

    def clay_requests(self) -> int:
        """Requests that reached the simulated Clay (control requests excluded)."""
        return int(self.control("GET", "stats")["clay_requests"])


NGINX_CONF: Final = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp_body;
    proxy_temp_path {root}/tmp_proxy;
    fastcgi_temp_path {root}/tmp_fastcgi;
    uwsgi_temp_path {root}/tmp_uwsgi;
    scgi_temp_path {root}/tmp_scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"""


class NginxProcess(_Process):
    """nginx (one worker) on 127.0.0.1 answering every request ``200 {"ok":true}``."""

    name = "nginx"

    def __init__(self, root: Path, binary: str) -> None:
        super().__init__(root)
        self.binary = binary
        self.port = 0
        self.url = ""

    def start(self) -> NginxProcess:
        self.port = free_port()
        conf = self.root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=self.root, port=self.port))
        self._spawn([self.binary, "-p", str(self.root), "-c", str(conf), "-e", "stderr"])
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    msg = f"nginx did not listen within {READY_TIMEOUT}s:\n{self.log_text()}"
                    raise RuntimeError(msg) from None
                time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        return self
