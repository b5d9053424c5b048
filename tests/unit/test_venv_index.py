"""The host's pip configuration, carried over to uv."""

from __future__ import annotations

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
