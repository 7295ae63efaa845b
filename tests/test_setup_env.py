"""tools/setup_env.py tells uv what pip would use: the same indexes, find-links and constraints."""
from tools.setup_env import parse_pip_config

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


def test_the_supported_pythons_are_stated_once_and_repeated_alike():
    import re
    import tomllib
    from pathlib import Path

    from tools.setup_env import MIN_PYTHON

    root = Path(__file__).resolve().parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = ".".join(map(str, MIN_PYTHON))
    assert declared == f">={floor}"
    for page in ("README.md", "book/setup.md"):
        said = set(re.findall(r"Python (3\.\d+) or newer", (root / page).read_text()))
        assert said == {floor}, page
