"""The host's pip configuration, carried over to uv."""

from __future__ import annotations

import sys
from pathlib import Path

from shipyard import venv


def test_pip_files_env_and_uv_settings_in_pips_order(tmp_path: Path):
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    xdg = tmp_path / "xdg"
    (xdg / "pip").mkdir(parents=True)
    (xdg / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://site.example/simple\ntrusted-host = a.example\n"
        "  b.example\ncert = /site/ca.pem\n"
    )
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://user.example/simple\n[install]\n"
        "extra-index-url = https://extra.example/simple\n"
    )
    environ = {"XDG_CONFIG_DIRS": str(xdg), "PIP_CERT": "/env/ca.pem"}
    found = venv.pip_settings(environ, home)
    assert found["index-url"] == ("https://user.example/simple", str(home / ".config/pip/pip.conf"))
    assert found["trusted-host"][0] == "a.example b.example"
    assert found["cert"] == ("/env/ca.pem", "PIP_CERT")  # PIP_* beat the files, as in pip
    uv = venv.uv_environment(environ, home)
    assert uv == {
        "UV_INDEX_URL": "https://user.example/simple",
        "UV_EXTRA_INDEX_URL": "https://extra.example/simple",
        "UV_INSECURE_HOST": "a.example b.example",
        "SSL_CERT_FILE": "/env/ca.pem",
        "UV_SYSTEM_CERTS": "1",  # the system trust store, where corporate CAs are added
    }
    # what the operator set for uv itself is left alone
    mine = {**environ, "UV_DEFAULT_INDEX": "https://mine/simple", "UV_NATIVE_TLS": "0"}
    uv = venv.uv_environment(mine, home)
    assert "UV_INDEX_URL" not in uv and "UV_SYSTEM_CERTS" not in uv
    assert venv.pip_settings({**environ, "PIP_CONFIG_FILE": "/dev/null"}, home) == {
        "cert": ("/env/ca.pem", "PIP_CERT")
    }


def test_the_python_an_app_asks_for(tmp_path: Path):
    from shipyard.config import AppConfig

    assert venv.python_request(tmp_path, AppConfig()) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nrequires-python = ">=3.9"\n')
    assert venv.python_request(tmp_path, AppConfig()) == (
        ">=3.9",
        "requires-python in pyproject.toml",
    )
    (tmp_path / ".python-version").write_text("# pinned\n3.12\n")
    assert venv.python_request(tmp_path, AppConfig()) == ("3.12", ".python-version")
    assert venv.python_request(tmp_path, AppConfig(python="3.11"))[1] == "python in shipyard.toml"
    major, minor = sys.version_info[:2]
    assert venv.satisfied_by_own(f"{major}.{minor}") and venv.satisfied_by_own(f">={major}.0")
    assert not venv.satisfied_by_own("2.7") and not venv.satisfied_by_own(f"<{major}")
    assert not venv.satisfied_by_own("pypy3.10")
