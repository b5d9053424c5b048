"""Real apps pushed as a provisioned deploy user over a private sshd (test_quickstart's)."""

from __future__ import annotations

import os
import pwd
import re
import secrets
from pathlib import Path

import pytest
from conftest import Work, free_port, remove_user, run, shipyard
from test_quickstart import need_root_and_sshd, private_sshd
from test_realapps import tls_index  # noqa: F401  (fixture)
from test_ssh import keygen

pytestmark = pytest.mark.e2e

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def test_a_local_https_index_the_system_store_trusts_works_for_the_deploy_user(
    tmp_path,
    tls_index,  # noqa: F811
):
    """The index's CA is in the system store only, the index in the deploy user's pip.conf;
    the app names the Python it needs (read with a library the provisioned venv must hold)."""
    need_root_and_sshd()
    index, ca = tls_index
    bundle = tmp_path / "system-bundle.pem"
    bundle.write_text(SYSTEM_BUNDLE.read_text() + ca.read_text())
    bundle.chmod(0o644)
    # sshd, and so every session of the deploy user, in a mount namespace of its own where the
    # system store holds the test's CA: nothing outside it changes
    mount = f'mount --bind {bundle} {SYSTEM_BUNDLE} && exec "$0" "$@"'
    user, key = f"syindex{secrets.token_hex(3)}", keygen(tmp_path / "alice", "alice@laptop")
    try:
        with private_sshd(tmp_path / "sshd", user, ("unshare", "-m", "sh", "-c", mount)) as port:
            shipyard(
                "provision", "--user", user, f"--key=alice={key}.pub", "--app", "mysite",
                "--port", str(free_port()),
            )  # fmt: skip
            home = Path(pwd.getpwnam(user).pw_dir)
            conf = home / ".config" / "pip" / "pip.conf"
            write = f"mkdir -p {conf.parent} && printf '[global]\\nindex-url = {index}\\n' > {conf}"
            run(
                "runuser",
                "-u",
                user,
                "--",
                "sh",
                "-c",
                write,
                env={**os.environ, "HOME": str(home)},
            )

            work = Work(tmp_path / "app")
            work.path.mkdir()
            work.git("init", "-q", "-b", "main")
            project = '[project]\nname = "app"\nversion = "1"\nrequires-python = ">=3.9"\n'
            files = {
                "requirements.txt": "greeting==1.0\n",
                "main.py": "",
                "pyproject.toml": project,
            }
            work.commit("needs greeting", **files)  # and says which Python it runs on
            url = f"ssh://{user}@127.0.0.1:{port}/~/apps/mysite/repo.git"
            work.git("remote", "add", "production", url)
            ssh = (
                f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR "
                f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p {port}"
            )
            env = {**os.environ, "GIT_SSH_COMMAND": ssh}
            pushed = run(
                "git",
                "push",
                "-o",
                "color=never",
                "production",
                "main",
                cwd=work.path,
                env=env,
                check=False,
            )
            out = pushed.stdout + pushed.stderr
            assert pushed.returncode == 0 and "live:" in out, out
            assert re.search(rf"✓ venv .*built .*index-url from {re.escape(str(conf))}", out), out
            live = home / "apps" / "mysite" / "current"
            python = live / ".venv" / "bin" / "python"
            code = "import greeting; print(greeting.HELLO)"
            said = run("runuser", "-u", user, "--", python, "-c", code, cwd=live)
            assert said.stdout.strip() == "hello from the local index"

            doctor = run(*ssh.split(), f"{user}@127.0.0.1", "shipyard", "doctor", "mysite")
            assert re.search(rf"✓ index +{re.escape(index)} answers", doctor.stdout), doctor.stdout
    finally:
        remove_user(user)
