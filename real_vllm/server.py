"""Start ``real-vllm serve`` in a child process on 127.0.0.1 and stop it cleanly.

Used by the demo, the tests and the benchmarks, so that each talks to a real server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# CPU-friendly settings for small models; callers may override any of them.
CPU_SERVE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``with LocalServer(model, ["--sampler", "edt"]) as server: server.base_url``"""

    def __init__(
        self,
        model: str | os.PathLike,
        args: list[str] = (),
        *,
        env: dict[str, str] | None = None,
        startup_timeout: float = 600.0,
        progress: bool = False,
    ):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = str(model)
        self.args = [*CPU_SERVE_ARGS, *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", **(env or {})}
        # The Triton interpreter is for op tests only; a server never wants it.
        self.env.pop("TRITON_INTERPRET", None)
        self.startup_timeout = startup_timeout
        self.progress = progress
        self.log_path = Path(tempfile.mkstemp(prefix="real_vllm_server_", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "real_vllm.cli", "serve", self.model, *self.args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        from tqdm import tqdm

        start = time.monotonic()
        deadline = start + self.startup_timeout
        # A live bar on a terminal; elsewhere (CI logs, pipes) one line now and one when it is up,
        # not a carriage-return stream that reads as one endless line.
        live = self.progress and sys.stderr.isatty()
        if self.progress and not live:
            print(f"starting vLLM server (log: {self.log_path}) ...", file=sys.stderr, flush=True)
        bar = tqdm(desc="starting vLLM server", unit="s", disable=not live)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the vLLM server exited with code {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                        if r.status == 200:
                            if self.progress and not live:
                                print(f"vLLM server up after {time.monotonic() - start:.0f} s", file=sys.stderr,
                                      flush=True)
                            return
                except OSError:
                    pass
                time.sleep(1.0)
                bar.update(1)
        finally:
            bar.close()
        self.stop()
        raise TimeoutError(f"the vLLM server did not start in {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (vLLM shuts down gracefully), then SIGTERM, then SIGKILL the whole group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # engine-core children that outlived the API server
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
