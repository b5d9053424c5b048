"""The nginx site shipyard writes, and the check root's helper makes before including it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipyard import proxy
from shipyard.app import App
from shipyard.config import ConfigError, parse_host_config
from shipyard.domains import with_domains
from shipyard.errors import ShipyardError


def spec(tmp_path: Path, **over) -> dict:
    app = App(tmp_path / "apps", "shop")
    host = parse_host_config('domains = ["www.shop.test", "shop.test"]\nport = 8123\n', "x")
    tls = {"certificate": str(app.dir / "tls/live/fullchain.pem"), "key": str(app.dir / "k.pem")}
    sp = proxy.spec(app, host, tls)
    sp.update(over)
    return sp


def test_site_proxies_with_forwarded_headers_redirects_and_serves_static(tmp_path):
    text = proxy.render(spec(tmp_path))
    assert "server_name www.shop.test shop.test;" in text
    assert "proxy_pass http://127.0.0.1:8123;" in text
    for header in ("Host $host", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme"):  # fmt: skip
        assert f"proxy_set_header {header};" in text
    assert "return 308 https://$host$request_uri;" in text
    assert f"alias {tmp_path}/apps/shop/current/static/;" in text
    assert "Strict-Transport-Security" not in text
    assert "Strict-Transport-Security" in proxy.render(spec(tmp_path, hsts=True))
    assert "listen 443 ssl http2;" in text


def test_site_without_tls_serves_http_only(tmp_path):
    text = proxy.render(spec(tmp_path, tls=None))
    assert "ssl" not in text and "return 308" not in text
    assert "acme-challenge" in text


def test_helper_accepts_exactly_what_shipyard_renders(tmp_path):
    text = proxy.site_text(spec(tmp_path))
    assert proxy.verify_site(text, tmp_path)["app"] == "shop"
    with pytest.raises(ConfigError, match="not what shipyard renders"):
        proxy.verify_site(text + "    access_log /root/.bashrc;\n", tmp_path)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"static_dir": "/etc/ssl/private"}, "outside"),
        ({"tls": {"certificate": "/etc/shadow", "key": "/etc/shadow"}}, "outside"),
        ({"maintenance": "/x; include /etc/passwd"}, "unsafe path"),
        ({"domains": ["a.test; return 200"]}, "not a domain name"),
        ({"upstream": "8000; x"}, "bad 'upstream'"),
    ],
)
def test_helper_refuses_a_spec_naming_what_the_user_may_not(tmp_path, over, message):
    sp = spec(tmp_path, **over)
    text = proxy.HEADER + json.dumps(sp, sort_keys=True) + "\n" + "x"
    with pytest.raises(ConfigError, match=message):
        proxy.verify_site(text, tmp_path / "apps")


def test_domains_line_is_set_above_the_tables():
    text = 'branch = "main"\n\n[health]\npath = "/"\n'
    new = with_domains(text, ["www.shop.test"])
    assert parse_host_config(new, "x").domains == ["www.shop.test"]
    assert new.index("domains") < new.index("[health]")
    assert parse_host_config(with_domains(new, []), "x").domains == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('domains = ["Shop.test"]', "is not a domain name"),
        ('domains = ["shop.test", "shop.test"]', "listed twice"),
        ('[proxy]\ntls = "maybe"', "proxy.tls must be"),
    ],
)
def test_host_config_refuses_bad_front_door_settings(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_host_config(text, "shipyard.toml")


def test_provision_writes_the_include_the_helper_and_one_sudo_rule(tmp_path):
    from shipyard.provision.frontdoor import root_files

    shipyard = Path("/usr/local/lib/x/bin/shipyard")
    files = {str(f.path): f for f in root_files("deploy", shipyard, Path("/home/deploy/apps"))}
    include = files["/etc/nginx/conf.d/shipyard.conf"]
    assert "include /etc/nginx/shipyard.checked/*.conf;" in include.text
    helper = files["/usr/local/sbin/shipyard-proxy-reload"]
    assert "exec /usr/local/lib/x/bin/shipyard proxy-reload --sites /etc/nginx/shipyard" in (
        helper.text
    )
    rule = files["/etc/sudoers.d/shipyard-deploy"]
    # the user may run the helper with no arguments at all, and nothing else
    assert rule.text == 'deploy ALL=(root) NOPASSWD: /usr/local/sbin/shipyard-proxy-reload ""\n'
    assert rule.mode == 0o440
    # renewal without a deploy: cron runs `tls --all` as the deploy user, twice a day
    renewal = files["/etc/cron.d/shipyard-tls-deploy"]
    entry = renewal.text.splitlines()[-1].split()
    assert entry[1:6] == ["3,15", "*", "*", "*", "deploy"]
    assert " ".join(entry[6:]) == f"{shipyard} --root /home/deploy/apps tls --all >/dev/null"
    assert renewal.mode == 0o644


def test_root_helper_copies_only_checked_sites_and_keeps_the_old_set_when_refused(tmp_path):
    sites, checked = tmp_path / "sites", tmp_path / "checked"
    (sites / "deploy").mkdir(parents=True)
    good = proxy.site_text(spec(tmp_path))
    (sites / "deploy" / "shop.conf").write_text(good)
    assert proxy.reload_sites(sites, checked, ["true"], tmp_path) == ["deploy--shop.conf"]
    assert (checked / "deploy--shop.conf").read_text() == good
    (sites / "deploy" / "shop.conf").write_text(good + "include /etc/shadow;\n")
    with pytest.raises(ConfigError, match="not what shipyard renders"):
        proxy.reload_sites(sites, checked, ["true"], tmp_path)
    assert (checked / "deploy--shop.conf").read_text() == good
    (sites / "deploy" / "shop.conf").write_text(good)
    with pytest.raises(ShipyardError, match="nginx -t"):
        proxy.reload_sites(sites, checked, ["false"], tmp_path)
    assert (checked / "deploy--shop.conf").read_text() == good


def test_push_option_maintenance_brackets_the_migrations_and_only_then():
    import io

    from shipyard.config import HostConfig
    from shipyard.context import Deploy
    from shipyard.deploy import PHASES, with_options
    from shipyard.report import Reporter

    d = Deploy(None, HostConfig(), 1, "a" * 40, "refs/heads/main", Reporter(io.StringIO()))
    assert with_options(d, PHASES) == PHASES
    d.options = {"maintenance": ""}
    names = [p.name for p in with_options(d, PHASES)]
    assert names.index("maintenance") == names.index("migrate") - 1
    assert names.index("maintenance-off") == names.index("verify") + 1
