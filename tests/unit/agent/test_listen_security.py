"""Which control listeners may go without TLS, and how errors show export names."""

from __future__ import annotations

from pathlib import Path

import pytest

from openevs.agent.client import _shown
from openevs.agent.runner import check_listen_security
from openevs.domain.addresses import is_loopback
from openevs.security import PkiError, redacted
from openevs.security.pki import TlsFiles


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.0.5", False), ("storage1.example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["unix:/run/openevs/a.sock", "127.0.0.1:8780", "[::1]:8780"])
def test_plaintext_is_allowed_where_no_one_else_reaches(listen: str) -> None:
    check_listen_security(listen, None)


@pytest.mark.parametrize("listen", ["0.0.0.0:8780", "10.1.0.5:8780", "[::]:8780"])
def test_a_reachable_plaintext_listener_is_refused(listen: str) -> None:
    with pytest.raises(PkiError, match="would answer anyone"):
        check_listen_security(listen, None)
    check_listen_security(listen, TlsFiles(Path("ca.pem"), Path("a.pem"), Path("a.key")))


def test_export_names_are_cut_in_messages() -> None:
    name = "att-" + "x" * 32
    assert redacted(name) == "att-xxxx..." and name not in _shown(f"/exports/{name}")
    assert _shown("/volumes/vol-1/grow") == "/volumes/vol-1/grow"
    assert redacted("short") == "..."
