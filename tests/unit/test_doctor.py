"""`shipyard doctor APP` on a local deploy root: each check, its failure and its fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import Host, run, shipyard

from shipyard import doctor
from shipyard.app import App


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The index check stays on loopback in tests (test_realapps runs it against a local one)."""
    monkeypatch.setenv("UV_OFFLINE", "1")


def check(host: Host, name: str) -> doctor.Check:
    results = doctor.run_checks(App.at(host.name, host.root), root_given=True)
    return next(c for c in results if c.name == name)


def test_a_fresh_app_passes(host: Host):
    result = shipyard("--root", host.root, "doctor", "mysite")
    assert result.returncode == 0, result.stdout
    for name in ("git", "layout", "hooks", "git config", "permissions", "disk"):
        assert any(ln.startswith(f"  ✓ {name} ") for ln in result.stdout.splitlines()), name
    assert "· receivers    no peers configured" in result.stdout
    assert "· supervisord" in result.stdout
    assert result.stdout.splitlines()[-1] == "shipyard doctor ▸ all checks passed"


def test_a_removed_hook_fails_with_its_fix(host: Host):
    (host.repo / "hooks" / "post-receive").unlink()
    result = shipyard("--root", host.root, "doctor", "mysite", check=False)
    assert result.returncode == 1
    assert "✗ hooks        hooks/post-receive is missing" in result.stdout
    assert f"fix: shipyard --root {host.root} init mysite" in result.stdout
    assert result.stdout.splitlines()[-1] == "shipyard doctor ▸ 1 problem(s): hooks"
    shipyard("--root", host.root, "init", "mysite")
    assert shipyard("--root", host.root, "doctor", "mysite").returncode == 0


def test_broken_hooks(host: Host):
    hook = host.repo / "hooks" / "proc-receive"
    hook.chmod(0o644)
    assert "hooks/proc-receive is not executable" in check(host, "hooks").detail
    hook.write_text("#!/nonexistent/python\nfrom shipyard.hooks.proc_receive import main\n")
    hook.chmod(0o755)
    assert "runs /nonexistent/python, which does not exist" in check(host, "hooks").detail
    hook.write_text("#!/bin/sh\necho hi\n")
    assert "is not shipyard's" in check(host, "hooks").detail


def test_git_config(host: Host):
    assert check(host, "git config").status == "ok"
    # as `shipyard init` set it before tags went to proc-receive: `shipyard init` again
    run("git", "--git-dir", host.repo, "config", "--unset-all", "receive.procReceiveRefs")
    run(
        "git",
        "--git-dir",
        host.repo,
        "config",
        "--add",
        "receive.procReceiveRefs",
        "refs/heads/main",
    )
    result = check(host, "git config")
    assert result.status == "fail" and "not refs/tags, refs/heads/main" in result.detail
    run("git", "--git-dir", host.repo, "config", "--unset-all", "receive.procReceiveRefs")
    result = check(host, "git config")
    assert result.status == "fail" and "receive.procReceiveRefs is unset" in result.detail


def test_old_git_fails(host: Host, tmp_path: Path, monkeypatch):
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho git version 2.20.1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    result = doctor.git_check(None)
    assert (
        result.status == "fail"
        and "2.20.1 is too old" in result.detail
        and "≥ 2.29" in result.detail
    )


def test_permissions(host: Host):
    assert check(host, "permissions").status == "ok"
    env = host.dir / "shared" / ".env"
    env.write_text("SECRET_KEY=x\n")
    env.chmod(0o644)
    result = check(host, "permissions")
    assert (
        result.status == "fail" and "secrets readable by every user: shared/.env" in result.detail
    )
    assert f"chmod o-rwx {env}" in result.fix
    env.chmod(0o600)
    (host.dir / "releases").chmod(0o777)
    result = check(host, "permissions")
    assert result.status == "fail" and "world-writable: releases" in result.detail
    (host.dir / "releases").chmod(0o755)
    assert check(host, "permissions").status == "ok"


def test_layout(host: Host):
    (host.dir / "current").symlink_to("releases/20990101T000000Z-abcdef0")
    result = check(host, "layout")
    assert result.status == "fail" and "no valid live release: current points at" in result.detail
    (host.dir / "current").unlink()
    (host.dir / "deploys").rmdir()
    assert check(host, "layout").detail == "missing: deploys/"


def test_receivers(host: Host):
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))
        up, down = listening.getsockname()[1], closed.getsockname()[1]
        host.set_host_config(peers=[f"127.0.0.1:{up}"])
        assert check(host, "receivers").status == "ok"
        host.set_host_config(peers=[f"127.0.0.1:{up}", f"127.0.0.1:{down}"])
        result = check(host, "receivers")
        assert result.status == "fail" and f"127.0.0.1:{down}" in result.detail


def test_disk_thresholds(host: Host, monkeypatch):
    usage = type("Usage", (), {"total": 10 << 30, "free": 100 << 20})
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _path: usage)
    assert check(host, "disk").status == "fail"


def test_unknown_app_is_one_line(tmp_path: Path):
    result = shipyard("--root", tmp_path, "doctor", "nope", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no shipyard app at" in result.stderr and "shipyard init nope" in result.stderr
    invalid = shipyard("--root", tmp_path, "doctor", "../etc", check=False)
    assert invalid.returncode == 1 and "invalid app name" in invalid.stderr


def test_boot(host: Host, monkeypatch, tmp_path: Path):
    from shipyard import boot

    assert check(host, "boot").status == doctor.SKIP  # nothing live: nothing to start
    release = host.dir / "releases" / "20261201T000000Z-1a2b3c4"
    release.mkdir(parents=True)
    (release / "Procfile").write_text("web: gunicorn app:app\n")
    (host.dir / "current").symlink_to(release)
    home = Path(os.path.expanduser("~"))
    monkeypatch.setattr(boot.pwd, "getpwnam", lambda _: type("E", (), {"pw_dir": str(home)}))
    monkeypatch.setattr(boot, "SUPERVISOR_CONF_DIR", tmp_path / "conf.d")
    monkeypatch.setattr(boot, "SYSTEMD_DIR", tmp_path / "systemd")
    outside = check(host, "boot")  # this root is not the user's ~/apps
    assert outside.status == doctor.WARN and "only" in outside.fix
    monkeypatch.setattr(
        boot.pwd, "getpwnam", lambda _: type("E", (), {"pw_dir": str(host.root.parent)})
    )
    missing = check(host, "boot")
    assert missing.status == doctor.WARN and "down until a push" in missing.detail
    assert "shipyard provision --user" in missing.fix
    wants = tmp_path / "systemd" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    user = boot.pwd.getpwuid(host.dir.stat().st_uid).pw_name
    (tmp_path / "systemd" / f"shipyard-{user}.service").write_text("[Unit]\n")
    assert "systemctl enable" in check(host, "boot").fix
    (wants / f"shipyard-{user}.service").symlink_to(
        tmp_path / "systemd" / f"shipyard-{user}.service"
    )
    ok = check(host, "boot")
    assert ok.status == doctor.OK and "systemd (shipyard-" in ok.detail
