"""`python -m openevs.agent`: one storage agent (what `openevs serve` starts per AZ).

Flags: --az AZ --pool DIR --listen unix:/path.sock|HOST:PORT --nbd HOST:PORT.
`openevs agent` calls the same `main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openevs.agent.runner import parse_hostport, run_agent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openevs.agent", description=__doc__)
    parser.add_argument("--az", required=True, help="availability zone this agent serves")
    parser.add_argument("--pool", required=True, type=Path, help="directory of volume files")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8780",
        help="control API address: unix:/path.sock or HOST:PORT (default 127.0.0.1:8780)",
    )
    parser.add_argument(
        "--nbd", default="127.0.0.1:10809", help="NBD address HOST:PORT (port 0 = any free)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        nbd_host, nbd_port = parse_hostport(args.nbd, "--nbd")
    except ValueError as exc:
        parser.error(str(exc))
    run_agent(args.az, args.pool, args.listen, nbd_host, nbd_port)


if __name__ == "__main__":
    main(sys.argv[1:])
