"""The agent zipapp: reproducible bytes, only the agent's sources, runnable on its own."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from bitinglip_agent import __version__
from bitinglip_agent.protocol import PROTOCOL_VERSION

from bitinglip import agent_bundle
from bitinglip.agent_bundle import build_zipapp

AGENT_DIR = Path(__file__).resolve().parents[2] / "agents" / "bitinglip_agent"


def names_in(pyz: Path) -> list[str]:
    with zipfile.ZipFile(pyz) as zf:
        return zf.namelist()


def test_building_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = build_zipapp(tmp_path / "a")
    second = build_zipapp(tmp_path / "b")
    again = build_zipapp(tmp_path / "a")  # over the existing file
    assert first.path.name == f"bitinglip-agent-{__version__}.pyz"
    assert first.version == __version__
    assert first.path.read_bytes() == second.path.read_bytes() == again.path.read_bytes()
    assert first.sha256 == second.sha256 == again.sha256
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [first.path.name]  # no temp left


def test_the_zip_holds_the_agent_sources_and_a_main(tmp_path: Path) -> None:
    bundle = build_zipapp(tmp_path)
    expected = sorted(
        f"bitinglip_agent/{p.relative_to(AGENT_DIR).as_posix()}"
        for p in AGENT_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    )
    names = names_in(bundle.path)
    assert names == sorted(["__main__.py", *expected])
    assert "bitinglip_agent/gguf_check.py" in names
    with zipfile.ZipFile(bundle.path) as zf:
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert (info.external_attr >> 16) & 0o7777 == 0o644
        main = zf.read("__main__.py").decode()
        assert 'runpy.run_module("bitinglip_agent", run_name="__main__")' in main
        assert zf.read("bitinglip_agent/protocol.py") == (AGENT_DIR / "protocol.py").read_bytes()
    assert bundle.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_only_python_sources_are_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package tree with bytecode, caches and data files: only the .py files go in."""
    pkg = tmp_path / "src" / "fake_agent"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '9'\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("X = 1\n")
    (pkg / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (pkg / "sub" / "__pycache__" / "stray.py").write_text("")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(agent_bundle, "AGENT_PACKAGE", "fake_agent")
    sources = agent_bundle.agent_sources()
    assert list(sources) == [
        "fake_agent/__init__.py",
        "fake_agent/sub/__init__.py",
        "fake_agent/sub/mod.py",
    ]
    first = agent_bundle.zipapp_bytes(sources)
    for path in pkg.rglob("*"):  # other mtimes and modes must not change a byte
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.chmod(0o700 if path.is_dir() else 0o600)
    assert agent_bundle.zipapp_bytes(agent_bundle.agent_sources()) == first


def test_the_agent_imports_from_the_zip_alone(tmp_path: Path) -> None:
    bundle = build_zipapp(tmp_path)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " import zipimport, bitinglip_agent.protocol as p;"
        " assert isinstance(p.__loader__, zipimport.zipimporter), p.__loader__;"
        " print(p.__file__, p.PROTOCOL_VERSION)"
    )
    # -I -S: no site-packages, so the editable install cannot stand in for the zip.
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(bundle.path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    where, version = out.stdout.split()
    assert where.startswith(str(bundle.path))
    assert int(version) == PROTOCOL_VERSION


@pytest.mark.skipif(
    not (AGENT_DIR / "__main__.py").exists(), reason="the agent has no __main__.py yet"
)
def test_the_zipapp_runs_the_agent(tmp_path: Path) -> None:
    bundle = build_zipapp(tmp_path)
    ping = json.dumps({"v": PROTOCOL_VERSION, "type": "ping", "id": "p1"}) + "\n"
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(bundle.path), "--telemetry-interval", "0"],
        input=ping.encode(),
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    messages = [json.loads(line) for line in out.stdout.splitlines()]
    assert messages, out.stderr.decode()
    assert messages[0]["type"] == "hello"
    assert any(m["type"] == "pong" and m.get("id") == "p1" for m in messages), messages
