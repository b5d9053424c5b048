"""docs/ci.md, run as CI runs it: the recipes' shell steps, taken from the page itself.

Each run is a fresh full clone, a HOME of its own, the deploy key only in
``SHIPYARD_DEPLOY_KEY``, a known_hosts line made from the host key file, and
no SSH agent — against test_ssh.py's real sshd and provisioned deploy user
(its module fixture: one sshd for this module).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import test_ssh
from conftest import REPO, run, shipyard
from httpload import fetch
from test_ssh import Server, clone_example, keygen

server = test_ssh.server  # one sshd and deploy user for this module

pytestmark = pytest.mark.e2e

DOC = REPO / "docs" / "ci.md"


def recipes() -> dict[str, str]:
    """The shell steps of each recipe: the block scalar after `run: |` or `- |` in its yaml."""
    text = DOC.read_text()
    found = {}
    for title, block in re.findall(
        r"### (GitHub Actions|GitLab CI).*?```yaml\n(.*?)```", text, re.S
    ):
        lines = block.splitlines()
        start = next(i for i, ln in enumerate(lines) if re.search(r"(run:|- ) ?\|$", ln))
        indent = len(lines[start]) - len(lines[start].lstrip())
        body = []
        for line in lines[start + 1 :]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        found[title] = textwrap.dedent("\n".join(body)) + "\n"
    return found


def test_the_page_has_both_recipes_and_never_disables_host_key_checks():
    steps = recipes()
    assert set(steps) == {"GitHub Actions", "GitLab CI"}
    for script in steps.values():
        assert "git push production HEAD:main" in script
        assert "StrictHostKeyChecking=yes" in script and "IdentityAgent=none" in script
    code = "".join(re.findall(r"```\w*\n(.*?)```", DOC.read_text(), re.S))
    assert "StrictHostKeyChecking=no" not in code and "KnownHostsFile=/dev/null" not in code
    assert "--force" not in "".join(steps.values())


@pytest.fixture(scope="module")
def ci(server: Server, tmp_path_factory) -> dict:  # noqa: F811 - the fixture above
    """The CI key authorised as `ci` (provision --key ci=…), and the secrets CI would hold."""
    directory = tmp_path_factory.mktemp("ci")
    key = keygen(directory / "ci", "ci@shipyard")
    added = shipyard("provision", "--user", server.user, f"--key=ci={key}.pub")
    assert "authorise key ci" in added.stdout
    kind, blob = (server.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return {
        "SHIPYARD_DEPLOY_KEY": key.read_text().rstrip("\n"),  # as a secret store keeps it
        "SHIPYARD_KNOWN_HOSTS": f"[127.0.0.1]:{server.port} {kind} {blob}",
        "SHIPYARD_REMOTE": server.url(),
        "origin": clone_example(directory / "origin", server.url()),
        "dir": directory,
        "server": server,
    }


def job(ci: dict, recipe: str, name: str, detach: bool = False, **secrets: str):
    """One CI job: a fresh full clone of the origin, then the recipe's steps in a clean env."""
    clone = ci["dir"] / name
    run("git", "clone", "-q", ci["origin"].path, clone)
    if detach:  # GitLab checks out the commit, not the branch
        run("git", "checkout", "-q", "--detach", "HEAD", cwd=clone)
    home = ci["dir"] / f"{name}-home"
    home.mkdir()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **{k: ci[k] for k in ("SHIPYARD_DEPLOY_KEY", "SHIPYARD_KNOWN_HOSTS", "SHIPYARD_REMOTE")},
        **secrets,
    }  # no SSH_AUTH_SOCK: no agent
    return subprocess.Popen(
        ["sh", "-c", recipes()[recipe]],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def commit(ci: dict, message: str, **files: str) -> str:
    return ci["origin"].commit(message, **files)


def history(srv: Server) -> list[dict]:
    lines = (srv.app / "deploys" / "deploys.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def port(srv: Server) -> int:
    return int(re.search(r"(?m)^port = (\d+)$", (srv.app / "shipyard.toml").read_text())[1])


def live_sha(srv: Server) -> str:
    manifest = (srv.app / "current" / ".shipyard" / "release.json").read_text()
    return json.loads(manifest)["sha"]


def test_github_actions_recipe_deploys_with_the_ci_key(ci: dict):
    server = ci["server"]
    sha = commit(ci, "from ci", **{"mysite/version.py": 'GREETING = "from github"\n'})
    result = finish(job(ci, "GitHub Actions", "gh1"))
    assert result.returncode == 0, result.stdout
    assert re.search(rf"deploy #\d+: main {sha[:7]} by ci", result.stdout)
    assert re.search(rf"shipyard ▸ live: {sha[:7]} in ", result.stdout)
    assert history(server)[-1]["pusher"] == "ci" and history(server)[-1]["outcome"] == "live"
    assert fetch(port(server), "/")[1].count("from github") == 1


def test_gitlab_recipe_from_a_detached_head(ci: dict):
    server = ci["server"]
    sha = commit(ci, "from gitlab", **{"mysite/version.py": 'GREETING = "from gitlab"\n'})
    result = finish(job(ci, "GitLab CI", "gl1", detach=True))
    assert result.returncode == 0, result.stdout
    assert live_sha(server) == sha and history(server)[-1]["pusher"] == "ci"
    assert "from gitlab" in fetch(port(server), "/")[1]


def test_a_host_key_that_is_not_the_pinned_one_is_refused(ci: dict):
    server = ci["server"]
    before = live_sha(server)
    other = keygen(ci["dir"] / "impostor", "impostor")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    commit(ci, "never deployed", **{"mysite/version.py": 'GREETING = "impostor"\n'})
    wrong = f"[127.0.0.1]:{server.port} {kind} {blob}"
    result = finish(job(ci, "GitHub Actions", "gh-wrong", SHIPYARD_KNOWN_HOSTS=wrong))
    assert result.returncode != 0
    assert "Host key verification failed" in result.stdout
    assert "shipyard ▸" not in result.stdout and live_sha(server) == before


@pytest.fixture(scope="module")
def failed_job(ci: dict):
    server = ci["server"]
    live = live_sha(server)
    commit(ci, "broken build", **{"shipyard.toml": 'build = ["exit 3"]\n'})
    return live, finish(job(ci, "GitHub Actions", "gh-failed"))


def test_a_failed_deploy_is_undone_and_says_so(ci: dict, failed_job):
    server = ci["server"]
    live, result = failed_job
    assert "failed at build" in result.stdout, result.stdout
    assert history(server)[-1]["outcome"] == "failed" and history(server)[-1]["pusher"] == "ci"
    assert live_sha(server) == live and fetch(port(server), "/healthz")[0] == 200


def test_a_failed_deploy_fails_the_ci_job(failed_job):
    result = failed_job[1]
    seen = result.stdout + (result.stderr or "")
    assert result.returncode != 0 and "[remote rejected]" in seen, seen


def test_two_jobs_racing_leave_the_newest_live(ci: dict, failed_job):
    server = ci["server"]
    fixed = {"shipyard.toml": ""}  # after failed_job's broken build
    older = commit(ci, "older", **fixed, **{"mysite/version.py": 'GREETING = "older"\n'})
    older_job = job(ci, "GitHub Actions", "race-older")
    newer = commit(ci, "newer", **{"mysite/version.py": 'GREETING = "newer"\n'})
    newer_job = job(ci, "GitLab CI", "race-newer", detach=True)
    first, second = finish(older_job), finish(newer_job)
    assert second.returncode == 0, second.stdout
    # the older job deployed first, was superseded by the newer one while queued
    # (nothing deployed for it), lost the branch's compare-and-swap to it (refused, "push
    # again"), or was refused by git as going back
    superseded = re.search(
        r"\[remote rejected\] \S+ -> main \((deploy #\d+ superseded|could not move main): ",
        first.stdout,
    )
    assert first.returncode == 0 or "[rejected]" in first.stdout or superseded, first.stdout
    assert live_sha(server) == newer != older
    assert "newer" in fetch(port(server), "/")[1]
