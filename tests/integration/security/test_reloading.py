"""ReloadingServerContext over real files: a change is picked up on the next handshake's
context; files that do not work never replace the working ones."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from openevs.security import pki
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
