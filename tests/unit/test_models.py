import pytest

from control.errors import InvalidArgument
from control.models import validate_name


@pytest.mark.parametrize("name", ["web1", "a", "A-b_c.9", "x" * 63])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 64, "web 1", "a/b", "a</name><devices>", "é", "a\n"])
def test_bad_names(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)
