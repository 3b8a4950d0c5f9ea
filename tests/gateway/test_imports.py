"""starlette, uvicorn and prometheus_client are loaded only by the gateway: not by the CLI's
other commands, the console or the control plane (import-linter checks the import graph; this
checks what really loads)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["bitinglip.cli", "bitinglip.control.plane"])
def test_the_http_stack_loads_only_for_the_gateway(module: str) -> None:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not loaded & {"starlette", "uvicorn", "h11"}
    assert "bitinglip.gateway.app" not in out.stdout.split()


@pytest.mark.parametrize("module", ["bitinglip.cli", "bitinglip.tui", "bitinglip.control"])
def test_prometheus_client_loads_only_for_the_gateway(module: str) -> None:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "prometheus_client" not in {m.split(".")[0] for m in out.stdout.split()}
    code = "import sys, bitinglip.gateway.app; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True"]  # the check above would see it
