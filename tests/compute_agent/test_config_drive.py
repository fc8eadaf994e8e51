"""The NoCloud config drive: built with pycdlib, read back with pycdlib."""

import time

import pytest
from compute_agent import config_drive

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr1ZtA7fCjH5Hz1l1vGuHq5M1lJbqjD1f6C2mYfxH0Q"
SCRIPT = b"#!/bin/sh\necho hello from user-data $(hostname)\n"


def test_iso_has_label_cidata_and_both_files(tmp_path):
    path = tmp_path / "config.iso"
    config_drive.build(path, UUID, "web-1", [KEY], SCRIPT)
    label, files = config_drive.read(path)
    assert label == "cidata"
    assert files["user-data"] == SCRIPT
    assert files["meta-data"] == (f'instance-id: "{UUID}"\nlocal-hostname: "web-1"\n'
                                  f'public-keys:\n  - "{KEY}"\n').encode()
    assert path.stat().st_mode & 0o777 == 0o600  # user data may hold secrets
    assert not list(tmp_path.glob("*.part"))


def test_meta_data_values_are_quoted_so_yaml_reads_them_verbatim():
    # A colon or '#' would otherwise change a plain YAML scalar's meaning.
    text = config_drive.meta_data("id: #1", "web", ["ssh-ed25519 AAAA a#b: c"]).decode()
    assert text == 'instance-id: "id: #1"\nlocal-hostname: "web"\npublic-keys:\n' \
                   '  - "ssh-ed25519 AAAA a#b: c"\n'


def test_empty_drive_still_names_the_instance(tmp_path):
    path = tmp_path / "config.iso"
    config_drive.build(path, UUID, "", [], b"")
    _, files = config_drive.read(path)
    assert files == {"meta-data": f'instance-id: "{UUID}"\n'.encode(), "user-data": b""}


def test_largest_user_data_builds_quickly(tmp_path):
    data = bytes(range(256)) * 256  # 64 KiB, binary
    started = time.perf_counter()
    config_drive.build(tmp_path / "config.iso", UUID, "web-1", [KEY], data)
    assert time.perf_counter() - started < 2
    assert config_drive.read(tmp_path / "config.iso")[1]["user-data"] == data


def test_rebuild_replaces_the_drive(tmp_path):
    path = tmp_path / "config.iso"
    config_drive.build(path, UUID, "a", [], b"one")
    config_drive.build(path, UUID, "b", [], b"two")
    assert config_drive.read(path)[1]["user-data"] == b"two"


@pytest.mark.parametrize("hostname", ["Web1", "-web", "web-", "a" * 64, "a.b", "a_b", "a b"])
def test_invalid_hostname_is_refused(tmp_path, hostname):
    with pytest.raises(ValueError):
        config_drive.build(tmp_path / "config.iso", UUID, hostname, [], b"")
    assert not list(tmp_path.iterdir())


def test_multi_line_key_is_refused(tmp_path):
    with pytest.raises(ValueError):
        config_drive.build(tmp_path / "config.iso", UUID, "web", [KEY + "\nssh-rsa AAAA evil"], b"")
