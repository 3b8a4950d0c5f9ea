"""API keys (no key, wrong key, right key, the env key), the refusal to listen beyond loopback
without keys, and `bitinglip serve` itself: --hash-key, and a real process serving until SIGTERM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitinglip.cli import app
from bitinglip.config_sections import hash_api_key
from bitinglip.errors import ConfigError
from bitinglip.gateway.server import Served, running
from tests.cli.conftest import COMMAND, hermetic_env
from tests.gateway.conftest import MODEL, assert_error_object, client, gateway_profile, request

KEY, ENV_KEY = "sk-test-right", "sk-test-from-env"
KEYED = f'api_keys = ["{hash_api_key(KEY)}"]\napi_key_env = "BITINGLIP_TEST_GATEWAY_KEY"'
Start = Callable[..., AbstractContextManager[Served]]


def test_keys_no_key_wrong_key_right_key(
    serve_profile: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITINGLIP_TEST_GATEWAY_KEY", ENV_KEY)
    with serve_profile(None, KEYED) as served:
        for path in ("/v1/models", "/metrics"):
            error = assert_error_object(request(served, "GET", path), 401)
            assert error["code"] == "invalid_api_key"
        body = {"model": MODEL, "prompt": "hi"}
        assert_error_object(request(served, "POST", "/v1/completions", body), 401)
        for header in ("Bearer sk-wrong", "Basic " + KEY, "Bearer", KEY):
            reply = request(served, "GET", "/v1/models", headers={"Authorization": header})
            assert_error_object(reply, 401)
        import openai

        with pytest.raises(openai.AuthenticationError):
            client(served, "sk-wrong").models.list()
        assert [m.id for m in client(served, KEY).models.list().data] == [MODEL]
        assert [m.id for m in client(served, ENV_KEY).models.list().data] == [MODEL]
        assert request(served, "GET", "/health").status in (200, 503)  # no key needed


def test_no_public_bind_without_keys(tmp_path: Path) -> None:
    profile = gateway_profile(tmp_path / "data", None)
    refused = pytest.raises(ConfigError, match=re.escape("refusing to serve on 0.0.0.0"))
    with refused, running(profile, bind="0.0.0.0"):
        pass


def test_serve_refuses_a_public_bind_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    argv = ["--data-dir", str(tmp_path), "serve", "--bind", "0.0.0.0", "--port", "0"]
    result = runner.invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bitinglip: refusing to serve on 0.0.0.0 with no API key")


def test_hash_key_prints_the_digest_for_api_keys() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--hash-key", KEY], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.strip() == hash_api_key(KEY)
    piped = runner.invoke(app, ["serve", "--hash-key", "-"], input=KEY + "\n")
    assert piped.exit_code == 0 and piped.stdout.strip() == hash_api_key(KEY)


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    """The real command, as a process: it says where it listens, answers, stops on SIGTERM."""
    profile = tmp_path / "serve.toml"
    profile.write_text('[[hosts]]\nname = "local"\nkind = "local"\n', encoding="utf-8")
    argv = [*COMMAND, "--profile", str(profile), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        [*argv, "serve", "--port", "0"],
        cwd=tmp_path,
        env=hermetic_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)/v1 \(profile serve,", line)
        assert found, line
        with urllib.request.urlopen(f"{found.group(1)}/v1/models", timeout=10) as reply:
            assert reply.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and out == ""
    finally:
        proc.kill()
        proc.wait()


def test_serve_refuses_a_bind_that_is_no_address(tmp_path: Path) -> None:
    argv = ["--data-dir", str(tmp_path), "serve", "--bind", "example.com"]
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bitinglip: --bind 'example.com' is not an IP address")
