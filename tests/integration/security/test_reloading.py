"""ReloadingServerContext over real files: a change is picked up on the next handshake's
context; files that do not work never replace the working ones."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest

from openevs.agent.nbd.handshake import TlsPolicy
from openevs.agent.nbd_tls import AgentTls
from openevs.security import pki, tls
from openevs.security.identity import CertRole, Identity
from openevs.security.reloading import ReloadingServerContext, files_stamp

AGENT = Identity(CertRole.AGENT, "az1.dc1")


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, AGENT, ip_addresses=["127.0.0.1"])
    return tmp_path


def test_unchanged_files_keep_their_context(pki_dir: Path) -> None:
    reloading = ReloadingServerContext(pki.files_for(pki_dir, "agent-az1.dc1"))
    first = reloading.current()
    assert reloading.current() is first and reloading.reloads == 0


def test_a_reissued_certificate_is_picked_up(pki_dir: Path) -> None:
    files = pki.files_for(pki_dir, "agent-az1.dc1")
    reloading = ReloadingServerContext(files)
    before, stamp = reloading.current(), files_stamp(files)
    pki.issue(pki_dir, AGENT, ip_addresses=["127.0.0.1"], force=True)
    assert files_stamp(files) != stamp
    assert reloading.current() is not before and reloading.reloads == 1


def test_broken_files_keep_the_working_context(pki_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = pki.files_for(pki_dir, "agent-az1.dc1")
    reloading = ReloadingServerContext(files)
    working = reloading.current()
    good_key = files.key.read_bytes()
    files.key.write_bytes(good_key[: len(good_key) // 2])  # half copied
    with caplog.at_level(logging.ERROR):
        assert reloading.current() is working
        assert reloading.current() is working
    assert sum("cannot be used" in r.message for r in caplog.records) == 1  # once per change
    files.key.write_bytes(good_key)
    os.utime(files.key, ns=(1, 1))  # a different stamp from the broken file's
    assert reloading.current() is not working and reloading.reloads == 1


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    """A TLS handshake over memory BIOs (no sockets); True if both ends completed it
    and the server's first read sees no alert (TLS 1.3 sends a client-certificate
    refusal after the client thinks it is done)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    done = {"server": False, "client": False}
    for _ in range(10):
        for name, end, out, peer_in in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
            peer_in.write(out.read())
    if not all(done.values()):
        return False
    client.write(b"x")
    s_in.write(c_out.read())
    try:
        return server.read(1) == b"x"
    except ssl.SSLError:
        return False


def test_the_agents_link_refuses_a_dropped_cas_certificate_without_a_restart(pki_dir: Path) -> None:
    files = pki.files_for(pki_dir, "agent-az1.dc1")
    agent = AgentTls(files, TlsPolicy.REQUIRED)
    link_server, link_client = agent.reloading_link_server_context(), agent.reloading_link_context()
    stolen = tls.client_context(files, check_hostname=False)  # the old certificate, kept by a thief
    assert _handshake(link_server, link_client()) and _handshake(link_server, stolen)
    pki.rotate_ca(pki_dir)
    pki.issue(pki_dir, AGENT, ip_addresses=["127.0.0.1"], force=True)
    pki.drop_old_cas(pki_dir, force=True)
    assert not _handshake(link_server, stolen)
    assert _handshake(link_server, link_client())  # the agent presents its reissued certificate
    nbd_server = agent.reloading_server_context()
    assert not _handshake(nbd_server, stolen) and _handshake(nbd_server, link_client())
