"""The README documents every command and every profile key (sqlite-utils' habit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import typer.main

from bitinglip.cli import app
from bitinglip.config import HostConfig, ModelAlias, QueueConfig, ServingConfig

README = (Path(__file__).parent.parent / "README.md").read_text()


def command_paths(command: object, prefix: str = "bitinglip") -> Iterator[str]:
    subcommands = getattr(command, "commands", {})
    for name, sub in subcommands.items():
        yield f"{prefix} {name}"
        yield from command_paths(sub, f"{prefix} {name}")


def test_every_command_is_in_the_readme() -> None:
    paths = [p for p in command_paths(typer.main.get_command(app)) if p.count(" ") > 0]
    assert paths
    missing = [p for p in paths if not re.search(rf"`{re.escape(p)}( |`)", README)]
    assert not missing


def test_every_profile_key_is_in_the_readme() -> None:
    keys = [f"queue.{f.name}" for f in fields(QueueConfig)]
    keys += [f.name for f in fields(HostConfig)]
    keys += [f.name for f in fields(ModelAlias) if f.name != "name"]
    keys += [f"serving.{f.name}" for f in fields(ServingConfig)] + ["gateway.auto_pull"]
    keys += ["controller.lease_s", "durability", "data_dir"]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing


def test_the_readme_opens_with_the_two_setup_commands() -> None:
    block = README.split("```")[1]
    assert "make run" in block and "make check" in block
    assert "make check" in (Path(__file__).parent.parent / ".ci" / "run").read_text()


ROOT = Path(__file__).parent.parent


def readme_tree() -> str:
    """The code tree in the README's Development section."""
    return README.split("## Development", 1)[1].split("```")[1]


def test_the_readme_tree_names_every_control_module_and_only_real_files() -> None:
    tree = readme_tree()
    named = set(re.findall(r"\b(\w+\.py)\b", tree))
    real = {p.name for p in (ROOT / "bitinglip").rglob("*.py")}
    real |= {p.name for p in (ROOT / "agents").rglob("*.py")}
    assert not named - real, "the README's tree names files that do not exist"
    control = ROOT / "bitinglip" / "control"
    unnamed = [
        str(p.relative_to(control))
        for p in control.rglob("*.py")
        if p.name not in named and p.parent.name != "ssh" and p.name != "__init__.py"
    ]
    assert not unnamed, "control modules missing from the README's tree"


def test_the_architecture_map_names_every_part_and_layer() -> None:
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    control = ROOT / "bitinglip" / "control"
    parts = [p.name for p in control.iterdir() if (p / "__init__.py").exists()]
    assert parts
    assert not [p for p in parts if f"{p}/" not in arch]
    layers = re.search(r"layers = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S)
    assert layers is not None
    names = re.findall(r"\w+", layers.group(1).replace('"', " "))
    assert not [n for n in names if n not in arch]
    assert "docs/ARCHITECTURE.md" in README
