"""The scripted CLI (Typer): thin noun-verb commands over the control plane."""

from bitinglip.cli.app import app, main

__all__ = ["app", "main"]
