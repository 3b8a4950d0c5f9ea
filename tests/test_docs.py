"""The README documents every command and every profile key (sqlite-utils' habit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import typer.main

from bitinglip.cli import app
from bitinglip.config import HostConfig, ModelAlias, QueueConfig

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
    keys += ["controller.lease_s", "durability", "data_dir"]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing


def test_the_readme_opens_with_the_two_setup_commands() -> None:
    block = README.split("```")[1]
    assert "make run" in block and "make check" in block
    assert "make check" in (Path(__file__).parent.parent / ".ci" / "run").read_text()
