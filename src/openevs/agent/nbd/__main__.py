"""Development tool: serve one file over NBD (benchmarks, interop tests).

    python -m openevs.agent.nbd FILE --port P [--host 127.0.0.1] [--read-only] [--name NAME]

The default export name "" is allowed here only; the agent itself serves
per-attachment secret names.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Annotated

import typer

from openevs.security.identity import Identity
from openevs.security.tls import public_server_context

from .export import Export, FileExport
from .server import NbdServer

PROG = "python -m openevs.agent.nbd"


async def serve(
    file: Path, host: str, port: int, name: str, read_only: bool, tls: ssl.SSLContext | None = None
) -> None:
    export = FileExport(file, read_only=read_only)

    async def resolve(requested: str, _peer: Identity | None) -> Export | None:
        return export if requested == name else None

    server = NbdServer(resolve, host, port, tls=tls)
    await server.start()
    print(f"serving {file} on nbd{'s' if tls else ''}://{host}:{server.port}/{name}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    export.close()


def serve_file(
    file: Annotated[Path, typer.Argument(help="The file to export (its size is the export's size).")],
    port: Annotated[int, typer.Option(help="TCP port to listen on (0: any free port).")] = 10809,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse writes, trims and zeroes.")] = False,
    name: Annotated[str, typer.Option(help='Export name clients must ask for (default "").')] = "",
    use_uvloop: Annotated[bool, typer.Option("--uvloop", help="Use uvloop if installed.")] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve TLS only (STARTTLS required) with this certificate (PEM).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The key of --tls-cert (PEM).")] = None,
) -> None:
    """Serve one file over NBD until SIGINT or SIGTERM (a development tool).

    The default export name "" is allowed here only; the agent itself
    serves per-attachment secret names.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed; using the default event loop", file=sys.stderr)
        else:
            uvloop.install()
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    context = public_server_context(tls_cert, tls_key) if tls_cert and tls_key else None
    asyncio.run(serve(file, host, port, name, read_only, context))


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve_file)
    app(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main(sys.argv[1:])
