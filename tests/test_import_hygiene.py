"""Imports point one way: the control plane loads no front end, the agent nothing of ours."""

from __future__ import annotations

import subprocess
import sys

FRONT_ENDS = (
    "textual", "typer", "click", "rich", "starlette", "uvicorn",
    "bitinglip.cli", "bitinglip.tui", "bitinglip.gateway",
)  # fmt: skip


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_the_control_plane_imports_no_front_end() -> None:
    loaded = loaded_after("bitinglip.control.plane")
    assert not {m for m in loaded if m.split(".")[0] in FRONT_ENDS or m in FRONT_ENDS}


def test_the_agent_protocol_imports_only_the_standard_library() -> None:
    loaded = loaded_after("bitinglip_agent.protocol")
    assert not {
        m for m in loaded if m.split(".")[0] in ("bitinglip", "psutil", "pynvml", "llama_cpp")
    }


def test_sqlite_utils_is_loaded_only_to_migrate() -> None:
    assert "sqlite_utils" not in loaded_after("bitinglip.control.plane")


def test_the_cli_loads_textual_only_for_the_console() -> None:
    """`bitinglip tasks ls` and friends start without the console's weight."""
    loaded = loaded_after("bitinglip.cli")
    assert not {m for m in loaded if m.split(".")[0] == "textual" or m.startswith("bitinglip.tui")}
