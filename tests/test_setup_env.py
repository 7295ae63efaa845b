"""tools/setup_env.py tells uv what pip would use: the same indexes, find-links and constraints."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from setup_env import parse_pip_config  # noqa: E402

LISTED = """\
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///a/simple file:///b/simple'
global.find-links='/elsewhere'
global.index-url='https://global.example/simple'
install.index-url='https://install.example/simple'
"""


def test_the_strongest_scope_wins_as_in_pip():
    settings = parse_pip_config(LISTED)
    assert settings["find-links"] == "/opt/wheels"                           # PIP_FIND_LINKS over pip.conf
    assert settings["index-url"] == "https://install.example/simple"         # [install] over [global]
    assert settings["extra-index-url"].split() == ["file:///a/simple", "file:///b/simple"]
    assert settings["cert"] == "/etc/ssl/certs/ca-certificates.crt"


def test_no_configuration_means_no_flags():
    assert parse_pip_config("") == {}
