import pytest

from control.store import keys


def test_instances_are_namespaced_by_project():
    assert keys.instance("p1", "abc") == "/cloud/projects/p1/instances/abc"
    assert keys.instance("p1", "abc").startswith(keys.instances("p1"))
    assert not keys.instance("p2", "abc").startswith(keys.instances("p1"))


def test_every_key_is_under_the_prefix():
    built = [keys.flavor("small"), keys.image("i"), keys.host("h"), keys.provider("h"),
             keys.allocation("i"), keys.instance_name("p", "web1"), keys.request("p", "r"),
             keys.instance_index("i")]
    assert all(k.startswith(keys.PREFIX + "/") for k in built)
    assert len(set(built)) == len(built)


def test_providers_and_hosts_do_not_overlap():
    assert not keys.provider("h").startswith(keys.hosts())


@pytest.mark.parametrize("bad", ["", "a/b", "../x"])
def test_parts_cannot_escape_their_namespace(bad):
    with pytest.raises(ValueError):
        keys.instance("p", bad)
    with pytest.raises(ValueError):
        keys.instances(bad)
