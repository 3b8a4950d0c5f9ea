"""`python -m bitinglip_agent`: the agent, speaking the protocol on stdin/stdout.

`--daemon --socket PATH` runs it detached instead, reachable on a Unix socket (what SSH hosts
run; see daemon.py), and `--attach PATH` relays stdin/stdout to such a daemon.
"""

from __future__ import annotations

import argparse
import sys

from bitinglip_agent.server import Agent, AgentOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitinglip_agent", description=__doc__)
    parser.add_argument("--host-name", default=None, help="the name the control plane knows")
    parser.add_argument("--model-dir", default=None, help="where models live on this host")
    parser.add_argument("--telemetry-interval", type=float, default=1.0, help="seconds; 0 = off")
    parser.add_argument("--idle-unload-s", type=float, default=300.0, help="unload idle models")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads; 0 = auto")
    parser.add_argument("--gpu-layers", type=int, default=-1, help="layers on GPU; -1 = all")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--daemon", action="store_true", help="run detached on --socket")
    mode.add_argument("--attach", metavar="SOCKET", help="relay stdio to the daemon at SOCKET")
    parser.add_argument("--socket", help="the daemon's Unix socket path")
    parser.add_argument(
        "--detached-exit-s", type=float, default=600.0, help="exit when detached and idle this long"
    )
    args = parser.parse_args(argv)
    options = AgentOptions(
        host_name=args.host_name,
        model_dir=args.model_dir,
        telemetry_interval=args.telemetry_interval,
        idle_unload_s=args.idle_unload_s,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
    )
    if args.attach:
        from bitinglip_agent import daemon

        return daemon.attach(args.attach)
    if args.daemon:
        from bitinglip_agent import daemon

        if not args.socket:
            parser.error("--daemon needs --socket PATH")
        return daemon.start(args.socket, options, args.detached_exit_s)
    return Agent(sys.stdin.buffer, sys.stdout.buffer, options).serve()


if __name__ == "__main__":
    sys.exit(main())
