"""Root never runs what the deploy user controls: shipyard commands run as root against files a
pusher could have planted (links in the deploy user's home, a swapped venv, a rewritten hook
interpreter), and a receiver started as root asked to run pushed code.

Each planted program writes its uid to a marker file: the test fails if uid 0 wrote it. Every
file root owns that a plant points at is compared before and after (owner, mode, content).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path

import faultlib
import pytest
from conftest import BIN, REPO, free_port, make_host, remove_user, run, shipyard

from shipyard import owner

sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402

observe = faultlib.observe
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the cases are root's")


def snapshot(*paths: Path) -> dict:
    """Owner, mode and content of each path (a directory: of everything in it)."""
    seen = {}
    for top in paths:
        for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
            st = path.lstat()
            body = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            seen[str(path)] = (st.st_uid, st.st_gid, st.st_mode, body)
    return seen


def recorder(marker: Path, path: str) -> str:
    """Shell that plants at ``path`` a program that appends its uid to ``marker`` and fails."""
    return f"printf '#!/bin/sh\\nid -u >> {marker}\\nexit 1\\n' > {path}; chmod 755 {path}"


def uids_in(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


# ---------------------------------------------------------------- the receiver


def signed(port: int, path: str, body: dict) -> tuple[int, str]:
    from shipyard.receiver import auth

    raw = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=raw,
            headers=auth.sign(netns.SECRET.encode(), "POST", path, raw, to=f"127.0.0.1:{port}"),
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_a_receiver_run_as_root_runs_no_pushed_code(tmp_path, observe):
    row = observe(
        "security",
        "a receiver started as root; a signed `prepare` for an app "
        "without `allow_root` whose build step records its uid",
    )
    host = make_host(tmp_path / "apps")
    config = host.dir / "shipyard.toml"
    secret = tmp_path / "cluster.secret"
    secret.write_text(netns.SECRET + "\n")
    secret.chmod(0o600)
    netns.set_config(config, secret_file=str(secret), name="web2")
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(ln for ln in lines if not ln.startswith("allow_root")))
    marker = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    (work / "requirements.txt").write_text("# nothing\n")
    (work / "shipyard.toml").write_text(f'build = [{{ run = "id -u >> {marker}" }}]\n')
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        run("git", *args, cwd=work)
    sha = run("git", "rev-parse", "HEAD", cwd=work).stdout.strip()
    run("git", "--git-dir", host.repo, "fetch", "-q", work, "main:refs/heads/incoming")
    port = free_port()
    log = open(tmp_path / "receiver.log", "wb")  # noqa: SIM115 - closed in the finally
    receiver = subprocess.Popen(
        [BIN / "shipyard", "--root", host.root, "receiver", "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        netns.wait_listening("127.0.0.1", port)
        rid = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha[:7]}"
        deploy = {"sha": sha, "release": rid, "number": 1}
        seen = {
            action: signed(port, f"/v1/apps/mysite/{action}", deploy)
            for action in ("prepare", "switch", "revert", "abort")
        }
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
        log.close()
    assert uids_in(marker) == [], "the build step ran as root"
    assert not [p for p in (host.dir / "releases").iterdir()], "a release was checked out"
    for action, (status, text) in seen.items():
        assert status == 403, (action, status, text)
        error = json.loads(text)["error"]
        assert error.startswith("refusing to deploy as root: the pushed code would run as root;")
        assert "allow_root = true" in error and "\n" not in error
    assert "refusing to deploy as root" in (tmp_path / "receiver.log").read_text()
    row["outcome"] = (
        f"403 `{error[:62]}…` for prepare, switch, revert and abort; the build step never ran, "
        "nothing was checked out"
    )


# ---------------------------------------------------------------- a provisioned deploy user


class Deployer:
    """A throw-away deploy user made by a real `shipyard provision`, with one app."""

    def __init__(self, name: str, keys: Path) -> None:
        self.name, self.keys = name, keys

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    def provision(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return shipyard("provision", "--user", self.name, *extra, check=check)

    def sh(self, script: str) -> None:
        """What a pushed build step could do: a shell script as the deploy user, in its home."""
        env = {"HOME": str(self.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        run("runuser", "-u", self.name, "--", "sh", "-ec", script, cwd=self.home, env=env)

    def tree(self) -> set[str]:
        """Every file in the user's home holding text (for "did a secret land there?")."""
        return {
            p.read_text(errors="replace")
            for p in self.home.rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 1 << 20
        }


def keygen(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path)
    return path.with_suffix(".pub")


@pytest.fixture(scope="module")
def deployer(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    user = Deployer(f"syroot{secrets.token_hex(3)}", keys)
    try:
        user.provision(f"--key=alice={keygen(keys / 'alice')}", "--app", "mysite")
        yield user
    finally:
        remove_user(user.name)


@pytest.fixture
def victims(tmp_path):
    """Root's files a plant points at: a file others may read, one only root may, a directory."""
    top = tmp_path / "root-owned"
    top.mkdir()
    (top / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (top / "passwd").chmod(0o644)
    (top / "shadow").write_text("root:TOPSECRET-hash:19000:0:99999:7:::\n")
    (top / "shadow").chmod(0o600)
    (top / "etc").mkdir(mode=0o755)
    (top / "etc" / "sudoers").write_text("root ALL=(ALL) ALL\n")
    before = snapshot(top)
    yield top
    assert snapshot(top) == before, "a root-owned file a plant pointed at changed"


LINKS = {
    "the temp name of authorized_keys -> a root file": (
        "ln -s {victims}/passwd .ssh/.authorized_keys.tmp",
        "rm .ssh/.authorized_keys.tmp",
    ),
    "~/.ssh -> a root directory": (
        "mv .ssh .ssh.real && ln -s {victims}/etc .ssh",
        "rm .ssh && mv .ssh.real .ssh",
    ),
    "authorized_keys -> a file only root may read": (
        "mv .ssh/authorized_keys .ssh/keys.real && ln -s {victims}/shadow .ssh/authorized_keys",
        "rm .ssh/authorized_keys && mv .ssh/keys.real .ssh/authorized_keys",
    ),
}


@pytest.mark.parametrize("plant", list(LINKS), ids=["tmp-link", "ssh-dir-link", "keys-link"])
def test_provision_follows_no_link_in_the_deploy_users_home(deployer, victims, observe, plant):
    row = observe(
        "security", f"`shipyard provision --key` re-run as root after a push planted {plant}"
    )
    setup, undo = (step.format(victims=victims) for step in LINKS[plant])
    deployer.sh(setup)
    try:
        bob = keygen(deployer.keys / f"bob{secrets.token_hex(2)}")
        result = deployer.provision(f"--key=bob={bob}", check=False)
    finally:
        deployer.sh(undo)
    # the fixture checks the root files (owner, mode, content) after the test
    assert not any("TOPSECRET" in text for text in deployer.tree()), "root's secret was copied"
    out = (result.stdout + result.stderr).strip()
    if result.returncode:
        assert result.stderr.count("\n") == 1 and "Permission denied" in result.stderr, out
        row["outcome"] = f"exit {result.returncode}: `{result.stderr.strip()[:120]}`; "
    else:
        keys = (deployer.home / ".ssh" / "authorized_keys").read_text()
        assert "ssh-command bob" in keys, out
        row["outcome"] = "key added (written as the deploy user, through a new temp file); "
    row["outcome"] += "the root-owned target unchanged (owner, mode, content)"


def test_provision_runs_no_venv_the_deploy_user_swapped_in(deployer, observe):
    row = observe(
        "security",
        "a push replaced ~/.shipyard/venv (its `python` records its uid, its install "
        "stamp edited); `shipyard provision` re-run as root",
    )
    marker = deployer.home / "marker"
    link = deployer.home / ".shipyard" / "venv"
    stamp = json.loads((link / "shipyard-install.json").read_text())
    stamp["fingerprint"] = "dir:changed"
    deployer.sh(
        f"""mv .shipyard/venv .shipyard/venv.orig; mkdir -p .shipyard/venv/bin
        {recorder(marker, ".shipyard/venv/bin/python")}
        cp .shipyard/venv/bin/python .shipyard/venv/bin/shipyard
        chmod 755 .shipyard/venv/bin/shipyard
        echo '{json.dumps(stamp)}' > .shipyard/venv/shipyard-install.json"""
    )
    try:
        result = deployer.provision(f"--key=carol={keygen(deployer.keys / 'carol')}", check=False)
        assert 0 not in uids_in(marker), "root ran the deploy user's python"
        assert result.returncode == 0, result.stdout + result.stderr
        venv = Path("/usr/local/lib/shipyard") / deployer.name / "venv"
        assert link.is_symlink() and link.resolve() == venv, result.stdout
        assert not owner.untrusted_tree(venv), owner.untrusted_tree(venv)
        assert f"link {link} -> {venv} (replacing the directory there)" in result.stdout
    finally:
        deployer.sh("rm -rf .shipyard/venv.orig marker || true")
    row["outcome"] = (
        f"the swapped venv never ran (no uid 0 in the marker); shipyard runs from root's {venv} "
        "(every component root's alone), and ~/.shipyard/venv became a link to it again"
    )


def test_the_system_supervisord_step_writes_through_no_planted_temp(
    deployer, victims, observe, tmp_path
):
    row = observe(
        "security",
        "the system-supervisord step of provision after a push planted "
        "~/.shipyard/.supervisord.conf.tmp -> a root file",
    )
    from shipyard.provision import host

    deployer.sh("rm -f .shipyard/supervisord.conf")  # so that this step writes it again
    deployer.sh(f"ln -s {victims}/passwd .shipyard/.supervisord.conf.tmp")
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    lay = host.Layout(deployer.name, deployer.home)
    lay.uid, lay.gid = deployer.uid, pwd.getpwnam(deployer.name).pw_gid
    try:
        changes = host.configure_supervisor(lay, mode="system", conf_dir=conf_dir, note=print)
    finally:
        deployer.sh("rm -f .shipyard/.supervisord.conf.tmp")
    conf = deployer.home / ".shipyard" / "supervisord.conf"
    assert not conf.is_symlink() and conf.stat().st_uid == deployer.uid  # written as the user
    assert "[program:shipyard-apps]" in conf.read_text()  # the one that starts the apps
    program = conf_dir / f"shipyard-{deployer.name}.conf"
    assert program.stat().st_uid == 0 and program.stat().st_mode & 0o777 == 0o644
    assert changes[:2] == [f"write {conf}", f"write {program}"]
    row["outcome"] = (
        "the root file unchanged; the user's supervisord.conf written by the deploy user, "
        "root's program file through a new temp file in root's directory"
    )


def test_doctor_as_root_runs_no_interpreter_the_deploy_user_wrote(deployer, observe):
    row = observe(
        "security",
        "`shipyard doctor` as root after a push rewrote the hook's `#!` "
        "to a program that records its uid",
    )
    marker = deployer.home / "marker"
    hook = deployer.home / "apps" / "mysite" / "repo.git" / "hooks" / "post-receive"
    original = hook.read_text()
    deployer.sh(
        f"""{recorder(marker, "evil")}
        sed -i '1s|.*|#!{deployer.home}/evil|' {hook}"""
    )
    try:
        result = shipyard("--root", deployer.home / "apps", "doctor", "mysite", check=False)
        assert 0 not in uids_in(marker), "root ran the hook's interpreter"
        assert result.returncode == 1, result.stdout + result.stderr
        assert "✗ hooks" in result.stdout and "cannot import" in result.stdout, result.stdout
        assert uids_in(marker) == [deployer.uid] * len(uids_in(marker))
    finally:
        deployer.sh("rm -f evil marker")
        hook.write_text(original)
    row["outcome"] = (
        f"the interpreter ran as the deploy user only (marker: uid {deployer.uid}): doctor as "
        "root runs its checks as the app's owner; `✗ hooks … cannot import`, exit 1"
    )


def test_provision_builds_no_source_others_can_change(deployer, observe):
    row = observe("security", "`shipyard provision --source DIR`, DIR in the deploy user's home")
    deployer.sh("mkdir -p src && printf '[project]\\nname = \"shipyard\"\\n' > src/pyproject.toml")
    stamp = deployer.home / ".shipyard" / "venv" / "shipyard-install.json"
    before = stamp.read_bytes()
    result = deployer.provision("--source", str(deployer.home / "src"), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    assert f"is owned by {deployer.name}" in result.stderr and "root's alone" in result.stderr
    assert stamp.read_bytes() == before  # nothing was built or installed
    row["outcome"] = f"exit 1: `{result.stderr.strip()[:150]}…`; the installed venv unchanged"
