"""Development tool: serve one file over NBD (benchmarks, interop tests).

    python -m openevs.agent.nbd FILE --port P [--host 127.0.0.1] [--read-only] [--name NAME]

The default export name "" is allowed here only; the agent itself serves
per-attachment secret names.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .export import Export, FileExport
from .server import NbdServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m openevs.agent.nbd", description=__doc__)
    parser.add_argument("file")
    parser.add_argument("--port", type=int, default=10809)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--name", default="", help='export name (default "")')
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    export = FileExport(args.file, read_only=args.read_only)

    async def resolve(name: str) -> Export | None:
        return export if name == args.name else None

    server = NbdServer(resolve, args.host, args.port)
    await server.start()
    print(f"serving {args.file} on nbd://{args.host}:{server.port}/{args.name}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    export.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed; using the default event loop", file=sys.stderr)
        else:
            uvloop.install()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
