"""Control-plane settings that depend on each other (control/config.py)."""

import pytest
from pydantic import ValidationError

from control.config import ControlConfig, load_config


def test_build_redrive_defaults_to_a_sixth_of_the_build_deadline():
    assert ControlConfig().build_deadline() == 180
    assert ControlConfig().build_redrive_after() == 30
    assert ControlConfig(build_deadline_s=12).build_redrive_after() == 2
    assert ControlConfig(spawn_timeout_s=300).build_redrive_after() == 60


def test_build_redrive_can_be_set_or_turned_off():
    assert ControlConfig(build_redrive_after_s=0).build_redrive_after() == 0
    assert ControlConfig(build_redrive_after_s=45).build_redrive_after() == 45


@pytest.mark.parametrize("settings", [
    {"build_redrive_after_s": 180},                           # the default deadline
    {"build_redrive_after_s": 20, "build_deadline_s": 15},
    {"build_redrive_after_s": -1},
])
def test_build_redrive_at_or_past_the_deadline_is_refused(settings):
    with pytest.raises(ValidationError, match="below the build deadline"):
        ControlConfig(**settings)


def test_a_config_file_with_a_redrive_past_the_deadline_does_not_load(tmp_path):
    path = tmp_path / "cloud.toml"
    path.write_text("[control]\nspawn_timeout_s = 30\nbuild_redrive_after_s = 120\n")
    with pytest.raises(ValidationError, match=r"build_redrive_after_s \(120\)"):
        load_config(path)


def test_leader_lease_below_etcds_minimum_is_refused():
    """etcd rounds a lease shorter than its election timeout up (about 2 s)."""
    assert ControlConfig().leader_lease_s == 10
    assert ControlConfig(leader_lease_s=3).leader_lease_s == 3
    with pytest.raises(ValidationError, match="leader_lease_s"):
        ControlConfig(leader_lease_s=1)


def test_a_vni_range_wider_than_the_conntrack_zones_is_refused():
    """A host's firewall keeps each network's connections in zone VNI % 65535 + 1:
    two networks of one cloud must never share a zone (once the default range,
    1..2**24-1, let them)."""
    assert ControlConfig().vni_range == (1, 65535)
    assert ControlConfig(vni_range=(1_000_000, 1_065_534)).vni_range == (1_000_000, 1_065_534)
    with pytest.raises(ValidationError, match="at most 65535"):
        ControlConfig(vni_range=(1, 65536))
    with pytest.raises(ValidationError, match="within 1..16777215"):
        ControlConfig(vni_range=(0, 10))
