import pytest

from shipyard import config
from shipyard.config import parse_app_config, parse_host_config, parse_procfile
from shipyard.errors import ConfigError


def test_defaults_when_empty():
    config = parse_app_config("")
    assert config.shared == [".env"] and config.build == [] and config.requirements is None


def test_syntax_error_names_file_and_line():
    with pytest.raises(ConfigError) as err:
        parse_app_config('build = ["ok"]\nkeep = = 3\n')
    assert str(err.value).startswith("shipyard.toml:2: not valid TOML")


def test_unknown_key_names_line_and_known_keys():
    with pytest.raises(ConfigError) as err:
        parse_app_config('keep = 3\n\n[health]\npath = "/"\ncolour = "red"\n')
    assert "shipyard.toml:5: unknown key 'health.colour'" in str(err.value)
    assert "known keys here: host, https, path, retries, status, timeout" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ('keep = "3"', "'keep' must be an integer, not str"),
        ("build = 'x'", "'build' must be a list, not str"),
        ("build = [1]", "each build step must be a command or a table with `run`"),
        ("build = [{ run = 'x', inputs = ['a'] }]", "needs both `inputs` and `outputs`"),
        ("build = [{ run = 'x', input = ['a'] }]", "unknown key 'input' in a build step"),
        ("build = [{ run = 'x', inputs = ['../a'], outputs = ['b'] }]", "relative path inside"),
        ("keep = true", "'keep' must be an integer, not bool"),
        ("keep = 0", "keep must be at least 1"),
        ('installer = "conda"', "installer must be 'uv' or 'pip'"),
        ('shared = ["../etc"]', "must be a relative path inside the repository"),
        ('requirements = "/etc/passwd"', "must be a relative path inside the repository"),
        ('[processes]\nweb = "two"', "[processes] must map process names to counts"),
    ],
)
def test_wrong_types_refused(text, message):
    with pytest.raises(ConfigError) as err:
        parse_app_config(text)
    assert message in str(err.value)


def test_host_config():
    host = parse_host_config('branch = "prod"\nkeep = 2\n', "host.toml")
    assert (host.branch, host.keep, host.installer, host.port) == ("prod", 2, "uv", 8000)


def test_procfile():
    assert parse_procfile("# c\nweb: gunicorn x\n\nworker:  python w.py\n") == {
        "web": "gunicorn x",
        "worker": "python w.py",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("web gunicorn", "Procfile:1: cannot read"),
        ("web: a\nweb: b", "Procfile:2: process 'web' is defined twice"),
        ("we b: x", "Procfile:1: cannot read"),
    ],
)
def test_procfile_errors(text, message):
    with pytest.raises(ConfigError) as err:
        parse_procfile(text)
    assert message in str(err.value)


def test_build_steps_plain_and_cached():
    config = parse_app_config(
        'build = ["make", { run = "collect", inputs = ["*/static/**"], outputs = ["static"] }]'
    )
    assert [s.run for s in config.build] == ["make", "collect"]
    assert not config.build[0].cacheable and config.build[1].cacheable
    assert config.build[1].outputs == ("static",)


def test_host_web_is_zero_or_unset():
    assert parse_host_config("web = 0\n", "host.toml").web == 0
    assert parse_host_config("", "host.toml").web is None
    with pytest.raises(ConfigError, match="host.toml:2: web = 2: the only value is 0"):
        parse_host_config("port = 8001\nweb = 2\n", "host.toml")


def test_a_keys_line_is_looked_for_only_when_an_error_names_it(monkeypatch):
    text = (
        'shared = [".env"]\nrequirements = "requirements.txt"\n'
        'build = [{ run = "make", inputs = ["a"], outputs = ["b"] }]\n[processes]\nweb = 0\n'
    )
    found = []
    monkeypatch.setattr(config, "_line_of", lambda *args: found.append(args) or 7)
    config.parse_app_config(text)
    config.parse_host_config("keep = 3\n", "shipyard.toml")
    assert found == []  # a valid file: no line wanted
    with pytest.raises(ConfigError, match=r"^shipyard.toml:7: '/abs' must be a relative path"):
        config.parse_app_config('shared = ["/abs"]\n')
