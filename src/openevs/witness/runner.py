"""`openevs witness`: a standalone witness host that stores no disks."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from openevs.security.pki import TlsFiles
from openevs.witness.arbiter import DEFAULT_LEASE_S
from openevs.witness.server import WitnessServer

log = logging.getLogger(__name__)


async def serve_witness(
    host: str, port: int, state_dir: Path, lease_s: float = DEFAULT_LEASE_S, tls: TlsFiles | None = None
) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = WitnessServer(state_dir, host, port, lease_s, tls)
    try:
        await server.start()
        print(f"witness listening on {host}:{server.port}, state in {state_dir}", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.close()
        log.info("witness stopped")


def run_witness(
    host: str, port: int, state_dir: Path, lease_s: float = DEFAULT_LEASE_S, tls: TlsFiles | None = None
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_witness(host, port, state_dir, lease_s, tls))
