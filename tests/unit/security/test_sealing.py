"""The sealing key: values open only with the key and purpose they were sealed with,
the key file is private, a rotation's file is picked up without a restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from openevs.security.sealing import (
    Sealer,
    SealError,
    is_sealed,
    key_id,
    kid_of,
    new_key,
    parse_keys,
    write_keys,
)

SECRET = "att-Jx3kq0m9Zr2VdUu7yT1aPq8sLw4eHn6B"


def test_a_sealed_value_opens_with_its_key_and_purpose_only() -> None:
    sealer = Sealer.ephemeral()
    sealed = sealer.seal(SECRET, "export")
    assert SECRET not in sealed and is_sealed(sealed) and kid_of(sealed) == sealer.current_kid
    assert len(sealed) <= 128  # the columns are String(128)
    assert sealer.open(sealed, "export") == SECRET
    assert sealer.seal(SECRET, "export") != sealed  # a fresh nonce each time
    with pytest.raises(SealError):
        sealer.open(sealed, "link")
    with pytest.raises(SealError, match="does not hold"):
        Sealer.ephemeral().open(sealed, "export")
    with pytest.raises(SealError, match="not sealed"):
        sealer.open(SECRET, "export")


@pytest.mark.parametrize("mangle", [lambda s: s[:-2] + ("AA" if s[-2:] != "AA" else "BB"), lambda s: s[:-9]])
def test_an_altered_value_does_not_open(mangle: object) -> None:
    sealer = Sealer.ephemeral()
    sealed = sealer.seal(SECRET, "link")
    with pytest.raises(SealError) as info:
        sealer.open(mangle(sealed), "link")  # type: ignore[operator]
    assert SECRET not in str(info.value)


def test_the_key_file_is_private_and_made_once(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "secrets.key"
    sealer, made = Sealer.load_or_create(path)
    assert made and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, made_again = Sealer.load_or_create(path)
    assert not made_again and again.kids == sealer.kids


def test_a_rotated_file_is_read_again_and_old_values_still_open(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    old = new_key()
    write_keys(path, [old])
    sealer = Sealer.from_file(path)
    before = sealer.seal(SECRET, "export")
    fresh = new_key()
    write_keys(path, [fresh, old])
    after = sealer.seal(SECRET, "export")
    assert kid_of(after) == key_id(fresh) and kid_of(before) == key_id(old)
    assert sealer.open(before, "export") == sealer.open(after, "export") == SECRET
    assert kid_of(sealer.reseal(before, "export")) == key_id(fresh)
    path.write_text("not a key\n")  # a broken file never replaces working keys
    assert sealer.open(after, "export") == SECRET


@pytest.mark.parametrize("text", ["", "# only a comment\n", "bm90IDMyIGJ5dGVz\n", "!!!\n"])
def test_a_key_file_that_is_not_keys_is_refused(text: str) -> None:
    with pytest.raises(SealError):
        parse_keys(text)
