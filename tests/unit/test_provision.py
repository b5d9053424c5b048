"""`shipyard provision`: input checks, authorized_keys merging, supervisord files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shipyard

from shipyard.provision import host
from shipyard.provision.host import (
    Key,
    Layout,
    ProvisionError,
    configure_supervisor,
    merge_authorized_keys,
    read_key,
    read_keys,
)

BIN = Path("/home/deploy/.shipyard/venv/bin/shipyard")


def keygen(path: Path, comment: str = "alice@laptop") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub")


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    return keygen(tmp_path / "alice")


@pytest.fixture
def bob(tmp_path: Path) -> Path:
    return keygen(tmp_path / "bob", "bob@ci")


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("shipyard: error: ") and result.stderr.count("\n") == 1
    assert text in result.stderr, result.stderr


def test_bad_input_is_refused_before_anything_happens(tmp_path: Path, alice: Path):
    missing = shipyard("provision", "--key", f"alice={tmp_path}/nope.pub", check=False)
    one_line_error(missing, f"--key alice={tmp_path}/nope.pub: no such file")
    spaced = shipyard("provision", "--key", f"al ice={alice}", check=False)
    one_line_error(spaced, "invalid key name 'al ice'")
    no_name = shipyard("provision", "--key", str(alice), check=False)
    one_line_error(no_name, "expected NAME=FILE")
    private = shipyard("provision", "--key", f"alice={alice.with_suffix('')}", check=False)
    one_line_error(private, "this is a private key")
    for user in ("Bad User", "root", "-x", "a" * 40, "../etc"):
        bad = shipyard("provision", f"--user={user}", "--key", f"alice={alice}", check=False)
        one_line_error(bad, "root" if user == "root" else "invalid user name")
    twice = shipyard("provision", "--key", f"a={alice}", "--key", f"b={alice}", check=False)
    one_line_error(twice, "are the same key")
    bad_app = shipyard("provision", "--app", "My App", check=False)
    one_line_error(bad_app, "invalid app name")
    port_alone = shipyard("provision", "--port", "8001", check=False)
    one_line_error(port_alone, "--port is the web port of an app")


def test_not_root_is_refused_in_one_line(monkeypatch, alice: Path):
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    with pytest.raises(ProvisionError, match="must run as root") as info:
        host.require_root()
    assert "\n" not in str(info.value)


def test_key_files_are_checked(tmp_path: Path, alice: Path):
    key = read_key("alice", alice)
    assert key.kind == "ssh-ed25519" and key.comment == "alice@laptop"
    for text, error in [
        ("", "expected exactly one public key line, found 0"),
        ("hello world\n", "not an OpenSSH public key"),
        (alice.read_text() * 2, "found 2"),
        ("ssh-ed25519 AAAA!!!\n", "not base64"),
        ("ssh-rsa " + alice.read_text().split()[1] + "\n", "does not match its type"),
        ('command="sh" ' + alice.read_text(), "not an OpenSSH public key"),
    ]:
        bad = tmp_path / "bad.pub"
        bad.write_text(text)
        with pytest.raises(ProvisionError, match=error):
            read_key("x", bad)


def test_authorized_keys_merge_is_idempotent_and_keeps_other_lines(alice: Path, bob: Path):
    a, b = read_keys([f"alice={alice}", f"bob={bob}"])
    admin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOadminadminadminadminadminadminadminadminad admin"
    text, changes = merge_authorized_keys(admin + "\n", [a], BIN)
    assert changes == ["authorise key alice (ssh-ed25519) with the forced command"]
    line = next(ln for ln in text.splitlines() if "alice" in ln)
    assert line.startswith(f'command="{BIN} ssh-command alice",no-port-forwarding,')
    assert ",restrict,pty ssh-ed25519 " in line  # a pty only for `shipyard run` (shell.py)
    assert "no-agent-forwarding" in line and "no-X11-forwarding" in line
    assert admin in text.splitlines()
    assert merge_authorized_keys(text, [a], BIN) == (text, [])
    text2, changes = merge_authorized_keys(text, [b], BIN)
    assert changes == ["authorise key bob (ssh-ed25519) with the forced command"]
    assert host.managed_names(text2) == ["alice", "bob"]
    assert merge_authorized_keys(text2, [a, b], BIN) == (text2, [])
    replaced = Key("alice", b.kind, "AAAAC3NzaC1lZDI1NTE5AAAAIOtherother", "new")
    text3, changes = merge_authorized_keys(text2, [replaced], BIN)
    assert changes == ["replace the key of alice"] and host.managed_names(text3) == ["alice", "bob"]
    with pytest.raises(ProvisionError, match="already in authorized_keys line 4 as bob"):
        merge_authorized_keys(text2, [Key("carol", b.kind, b.blob)], BIN)
    plain = b.kind + " " + b.blob + " bob\n"
    with pytest.raises(ProvisionError, match="without shipyard's forced command"):
        merge_authorized_keys(plain, [b], BIN)


def test_supervisor_without_the_system_package_is_left_to_shipyard(tmp_path: Path):
    lay = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    notes: list[str] = []
    changes = configure_supervisor(lay, conf_dir=tmp_path / "none", note=notes.append)
    assert changes == [] and "each app runs shipyard's own supervisord" in notes[0]
    with pytest.raises(ProvisionError, match="does not exist"):
        configure_supervisor(lay, mode="system", conf_dir=tmp_path / "none")


def test_supervisor_with_the_system_package(tmp_path: Path, monkeypatch):
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    lay = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    lay.state.mkdir(parents=True)
    monkeypatch.setattr(host, "enable_supervisor_program", lambda: "enabled it")
    dry = configure_supervisor(lay, conf_dir=conf_dir, dry_run=True)
    assert dry == [f"write {lay.supervisord_conf}", f"write {conf_dir}/shipyard-deploy.conf"]
    assert not list(conf_dir.iterdir())
    changes = configure_supervisor(lay, conf_dir=conf_dir)
    assert changes[-1] == "enabled it"
    program = (conf_dir / "shipyard-deploy.conf").read_text()
    assert "[program:shipyard-deploy]" in program and "user = deploy" in program
    assert "[include]" not in program  # root's supervisord never reads files deploy can write
    user_conf = lay.supervisord_conf.read_text()
    # it starts each app's own supervisord at its start (boot), never the apps' programs itself
    assert "[include]" not in user_conf and "programs.conf" not in user_conf
    assert f"command = {lay.shipyard_bin} --root {lay.apps} boot" in user_conf
    assert configure_supervisor(lay, conf_dir=conf_dir) == []
    assert host.configure_boot(lay, conf_dir=conf_dir) == []  # Debian's supervisor boots it


def test_without_the_system_package_a_systemd_unit_starts_the_apps_at_boot(
    tmp_path: Path, monkeypatch
):
    lay = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    lay.state.mkdir(parents=True)
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    monkeypatch.setattr(host, "SYSTEMD_DIR", systemd)
    enabled: list[list[str]] = []

    def fake_run(args, **kw):
        enabled.append([str(a) for a in args])
        (systemd / "multi-user.target.wants").mkdir(exist_ok=True)
        (systemd / "multi-user.target.wants" / args[-1]).symlink_to(systemd / args[-1])

    monkeypatch.setattr(host.subprocess, "run", fake_run)
    monkeypatch.setattr(host.shutil, "which", lambda *a, **k: "/bin/systemctl")
    notes: list[str] = []
    none = tmp_path / "none"
    dry = host.configure_boot(lay, conf_dir=none, dry_run=True, note=notes.append)
    assert dry[:2] == [f"write {lay.supervisord_conf}", f"write {systemd}/shipyard-deploy.service"]
    assert not lay.supervisord_conf.exists() and not enabled
    changes = host.configure_boot(lay, conf_dir=none, note=notes.append)
    assert changes[-1] == "enable shipyard-deploy.service (starts deploy's apps at boot)"
    assert enabled == [["/bin/systemctl", "enable", "shipyard-deploy.service"]]
    unit = (systemd / "shipyard-deploy.service").read_text()
    assert "User=deploy" in unit and "WantedBy=multi-user.target" in unit
    assert f"ExecStart={lay.venv}/bin/supervisord -n -c {lay.supervisord_conf}" in unit
    assert "boot" in lay.supervisord_conf.read_text()
    assert host.configure_boot(lay, conf_dir=none, note=notes.append) == []  # idempotent
    assert host.configure_boot(lay, mode="none", conf_dir=none) == []
    monkeypatch.setattr(host, "SYSTEMD_DIR", tmp_path / "nosystemd")
    notes.clear()
    host.configure_boot(lay, conf_dir=none, note=notes.append)
    assert notes and "no systemd" in notes[0] and "runuser -u deploy -- " in notes[0]


def test_many_hosts_programs_run_as_the_deploy_user(tmp_path: Path, monkeypatch):
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    lay = Layout("deploy", tmp_path / "home", os.getuid(), os.getgid())
    lay.state.mkdir(parents=True)
    monkeypatch.setattr(host, "enable_supervisor_program", lambda *_: "enabled it")
    configure_supervisor(lay, conf_dir=conf_dir, receiver="10.0.0.2:7070", sync=["mysite"])
    user_conf = lay.supervisord_conf.read_text()
    assert "[program:shipyard-receiver]" in user_conf
    assert f"--root {lay.apps} receiver --listen 10.0.0.2:7070" in user_conf
    assert "[program:shipyard-sync-mysite]" in user_conf
    assert f"--root {lay.apps} sync mysite --every 30" in user_conf
    root_conf = (conf_dir / "shipyard-deploy.conf").read_text()
    assert "receiver" not in root_conf and "sync" not in root_conf  # never run by root
    notes: list[str] = []
    configure_supervisor(lay, mode="none", receiver="10.0.0.2:7070", note=notes.append)
    assert any("receiver --listen 10.0.0.2:7070" in n for n in notes)


@pytest.mark.parametrize(
    "address", ["7070", "10.0.0.2", "10.0.0.2:http", "10.0.0.2:70700", ":7070"]
)
def test_a_receiver_address_that_is_not_one_is_refused(address: str):
    with pytest.raises(ProvisionError, match="write ADDR:PORT"):
        host.check_listen_address(address)


def test_provision_installs_cron_when_it_is_missing(monkeypatch):
    import io

    def which(name, path=None):
        return None if name == "crontab" else f"/usr/bin/{name}"

    ran = []
    monkeypatch.setattr(host.shutil, "which", which)
    step = host.Provisioner(host.Options(dry_run=True), out=io.StringIO())
    monkeypatch.setattr(step, "run", lambda *args, **kw: ran.append(args))
    step.cron()
    assert step.changes == ["install cron (Debian package; runs the apps' [cron] jobs)"]
    assert ran == []  # a dry run installs nothing
    step.o.dry_run = False
    step.cron()
    assert ran == [("apt-get", "install", "-y", "-qq", "cron")]


def installed_modules(source: str, venv: Path) -> set[str]:
    """The modules a real build and install of ``source`` puts under site-packages/shipyard."""
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--no-deps", "--python", venv / "bin" / "python", source],
        check=True,
    )
    (site,) = venv.glob("lib/python*/site-packages/shipyard")
    return {str(p.relative_to(site)) for p in site.rglob("*.py")}


def test_a_checkout_built_before_installs_only_its_own_sources(tmp_path: Path):
    """setuptools packs whatever the checkout's build/lib holds: a module deleted since the
    last build (an old test-only module) must not reach the deploy user's venv."""
    top = Path(host.__file__).resolve().parent.parent
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text((top / "pyproject.toml").read_text())
    (checkout / "README.md").write_text("shipyard\n")
    for package in host.SOURCE_PACKAGES:
        shutil.copytree(
            top / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    planted = checkout / "build" / "lib" / "shipyard" / "removed_long_ago.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("raise SystemExit('stale')\n")

    copy = tmp_path / "copy"
    copy.mkdir()
    modules = installed_modules(host.staged(str(checkout), copy), tmp_path / "venv")
    assert "removed_long_ago.py" not in modules
    assert {"cli.py", "hooks/proc_receive.py", "receiver/server.py", "provision/host.py"} <= modules
    assert planted.exists()  # the checkout itself is left as it was
    wheel = tmp_path / "x.whl"
    assert host.staged(str(wheel), copy) == str(wheel)  # a wheel or a requirement: as given
