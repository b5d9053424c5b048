"""Bad input: each gets one clear line saying what to do, a non-zero status where there is
one, and nothing is lost (the branch and what is live stay as they were).

One deployed app for the module; a refused push leaves the clone's tip ahead of the host,
so each case resets the clone to the host's branch first.
"""

from __future__ import annotations

import json
import os
import re
import time

import faultlib
import pytest
from faultlib import check_invariants, entries, last_line, phase_line, sy

observe = faultlib.observe


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    with faultlib.deployed(base) as (host, work):
        yield host, work, base


@pytest.fixture
def clean(site):
    """The clone at the host's branch, the host serving it, before and after the case."""
    host, work, base = site
    work.git("reset", "-q", "--hard", host.branch())
    before = check_invariants(host)
    yield host, work, before
    work.git("reset", "-q", "--hard", host.branch())


def remote_lines(out: str) -> list[str]:
    return [ln.removeprefix("remote: ").rstrip() for ln in out.splitlines()]


def refused(host, work, before: str, out_check) -> str:
    """Push; it must be refused before the ref moves, with nothing changed."""
    tip = host.branch()
    n = len(entries(host))
    result = work.push(check=False)
    assert result.returncode != 0, result.out
    assert host.branch() == tip and len(entries(host)) == n
    assert check_invariants(host) == before
    line = next(ln for ln in result.out.splitlines() if "[remote rejected]" in ln)
    out_check(line)
    return re.sub(r"^.*\[remote rejected\] main -> main \(", "", line).rstrip(")")


def test_no_requirements(clean, observe):
    host, work, before = clean
    row = observe("bad input", "an app repo without any requirements file")
    work.git("rm", "-q", "requirements.txt")
    work.commit("no requirements")

    def check(line):
        assert "no requirements: the commit has no uv.lock, requirements.txt or pyproject" in line
        assert "add a requirements.txt" in line

    row["outcome"] = f"push refused: `{refused(host, work, before, check)}`"


@pytest.mark.parametrize(
    ("procfile", "expected"),
    [
        ("web gunicorn mysite.wsgi\n", "Procfile:1: cannot read 'web gunicorn mysite.wsgi'"),
        ("web: gunicorn\nweb: gunicorn\n", "Procfile:2: process 'web' is defined twice"),
        ("web: gunicorn\n\xff\xfe\n", "Procfile:2: not UTF-8 text"),
    ],
    ids=["no colon", "defined twice", "not UTF-8"],
)
def test_procfile_syntax_error(clean, observe, procfile, expected):
    host, work, before = clean
    row = observe("bad input", f"a Procfile with a syntax error ({expected.split(': ', 1)[1]})")
    (work.path / "Procfile").write_bytes(procfile.encode("latin-1"))
    work.commit("bad Procfile")

    def check(line):
        assert expected in line, line

    row["outcome"] = f"push refused: `{refused(host, work, before, check)}`"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('keep = "5"\n', "shipyard.toml:1: 'keep' must be an integer, not str"),
        ('build = "collectstatic"\n', "shipyard.toml:1: 'build' must be a list, not str"),
        ("python = 3.12\n", "shipyard.toml:1: 'python' must be a string, not float"),
        ('\n[health]\ntimeout = "30s"\n', "shipyard.toml:3: 'health.timeout' must be an integer"),
        ("[processes]\nweb = -1\n", "shipyard.toml:1: [processes] must map process names"),
        ("shared = [1, 2]\n", "shipyard.toml:1: 'shared' must be a list of strings"),
        ("keep = true\n", "shipyard.toml:1: 'keep' must be an integer, not bool"),
    ],
    ids=[
        "keep str",
        "build str",
        "python float",
        "health str",
        "count negative",
        "shared ints",
        "bool",
    ],
)
def test_shipyard_toml_wrong_types(clean, observe, toml, expected):
    host, work, before = clean
    row = observe("bad input", f"shipyard.toml with a wrong type: `{toml.strip()}`")
    work.commit("wrong type", **{"shipyard.toml": toml})

    def check(line):
        assert expected in line, line

    row["outcome"] = f"push refused: `{refused(host, work, before, check)}`"


def test_binary_and_50mb_files(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a binary file and a 50 MB file in the push")
    blob = os.urandom(50 * 1024 * 1024)
    (work.path / "big.bin").write_bytes(blob)
    (work.path / "image.png").write_bytes(bytes(range(256)) * 64 + b"\0\xff")
    sha = work.commit("big")
    started = time.monotonic()
    out = work.push().out
    seconds = time.monotonic() - started
    assert last_line(out).startswith(f"shipyard ▸ live: {sha[:7]}"), out
    live = host.dir / "releases" / check_invariants(host)
    assert (live / "big.bin").read_bytes() == blob
    assert (live / "image.png").read_bytes() == (work.path / "image.png").read_bytes()
    row["outcome"] = (
        f"deployed byte-identical in {seconds:.1f}s (push included); "
        f"`{phase_line(out, 'checkout').strip()}`"
    )
    work.git("rm", "-q", "big.bin", "image.png")
    work.commit("drop the big files")
    work.push()


BAD_NAMES = ["../etc", "a/b", "my app", "café", "mysite\n", "-rf", ""]


def test_bad_app_names(site, observe):
    host, _, _ = site
    row = observe("bad input", "an app name with `../`, `/`, spaces, unicode, a newline, `-`")
    seen = []
    for name in BAD_NAMES:
        for command in (["init", name], ["status", name], ["deploy", name], ["rollback", name]):
            if command[0] in ("init", "status") or name:
                args = [*command[:1], "--", *command[1:]]
                result = sy(host, *args, check=False)
                assert result.returncode in (1, 2), (command, result)
                assert result.stderr.count("\n") == 1 or result.returncode == 2, result.stderr
                if result.returncode == 1:
                    assert "invalid app name" in result.stderr and "use lowercase" in result.stderr
                    seen.append(result.stderr.strip())
    assert sorted(p.name for p in host.root.iterdir()) == ["mysite"]  # nothing created
    row["outcome"] = f"status 1, one line, nothing created: `{seen[0]}`"


def test_bad_release_names(site, observe):
    host, _, _ = site
    row = observe("bad input", "a release name with `../`, `/`, spaces, unicode, a newline")
    lines = []
    for name in ["../../etc", "releases/../x", "a b", "café", "x\n", "/etc/passwd", "..", "-x"]:
        result = sy(host, "rollback", "mysite", "--", name, check=False)
        assert result.returncode == 1, (name, result)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "invalid release name" in result.stderr or "no release" in result.stderr
        lines.append(result.stderr.strip())
    for number in ["../1", "1/2", "é", "-1"]:
        result = sy(host, "log", "mysite", "--", number, check=False)
        assert result.returncode == 2 and "is not a deploy number" in result.stderr
    check_invariants(host)
    row["outcome"] = f"status 1, one line, nothing changed: `{lines[0]}`; `log` numbers refused"


@pytest.mark.parametrize(
    ("target", "name"),
    [("/etc/passwd", "passwd"), ("../../../../../../etc", "up"), ("../shared/.env", "env")],
    ids=["absolute", "relative escape", "into shared"],
)
def test_symlink_out_of_the_release(clean, observe, target, name):
    host, work, before = clean
    row = observe("bad input", f"a symlink in the repo pointing outside the release (`{target}`)")
    (work.path / name).symlink_to(target)
    sneaky = work.commit("sneaky link")
    n = len(entries(host))
    out = work.push(fails=True).out
    line = next(ln for ln in remote_lines(out) if "✗ checkout" in ln)
    assert f"symlink {name} -> {target} points outside the release" in line
    assert "hint: make it a relative link to a file inside the repository" in out
    assert check_invariants(host) == before
    assert entries(host)[n]["outcome"] == "failed"
    assert not [p for p in (host.dir / "releases").iterdir() if p.name.endswith(sneaky[:7])]
    assert host.branch() != sneaky  # reset: fixing the link and pushing again retries
    said = re.sub(r"^.*✗ checkout\s+\d+\.\d+s\s+", "", line)
    row["outcome"] = f"deploy failed at checkout, nothing followed: `{said}`"


def test_env_that_does_not_parse(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a shared `.env` that does not parse")
    env = host.dir / "shared" / ".env"
    env.write_text("GOOD=1\nSECRET_KEY='unterminated value s3cr3t\n")
    try:
        work.commit("any change", **{"mysite/version.py": 'GREETING = "env"\n'})

        def check(line):
            assert f"{env}:2: cannot parse this line of .env" in line, line
            assert "s3cr3t" not in line

        row["outcome"] = f"push refused: `{refused(host, work, before, check)}`"
    finally:
        env.unlink()


def test_commit_removing_the_procfile(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a commit on the deploy branch that removes the Procfile")
    work.git("rm", "-q", "Procfile")
    work.commit("no Procfile")

    def check(line):
        assert "has no Procfile: deploying it would stop web" in line, line
        assert "restore the Procfile" in line and "set its count to 0" in line

    row["outcome"] = f"push refused: `{refused(host, work, before, check)}`"


SECRETS = {
    "SECRET_KEY": "django-insecure-7x#k2s3cr3tvalue",
    "API_TOKEN": "tok_live_abcdef123456",
    "SMTP_URL": "smtp://mailer:pa55w0rd-mail@mail.example.com:587",
}


def test_output_with_env_values_is_masked(clean, observe):
    host, work, before = clean
    row = observe("security", "hook output containing the `.env` values (build step and release)")
    env = host.dir / "shared" / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    try:
        echo = "echo key=$SECRET_KEY token=$API_TOKEN url=$SMTP_URL pw=pa55w0rd-mail"
        work.commit(
            "echo secrets",
            **{
                "shipyard.toml": faultlib.NO_BUILD.replace(
                    "shared", f'build = ["{echo}; exit 3"]\nshared'
                )
            },
        )
        n = len(entries(host)) + 1
        out = work.push("-o", f"message=deploying {SECRETS['API_TOKEN']}", "main", fails=True).out
        assert "✗ build" in out and "key=********" in out and "token=********" in out
        assert re.search(r"by \S+: deploying \*{8}", out)
        assert "url=******** pw=********" in out  # a *_URL value whole, and its password
        assert check_invariants(host) == before
        leaks = leaked(host, out)
        assert not leaks, leaks
        row["outcome"] = (
            "masked in the push output, deploys/N.log, deploys.jsonl (error, message) and run/: "
            f"`{next(ln for ln in remote_lines(out) if '│ key=' in ln).strip()}`"
        )
        assert entries(host)[n - 1]["options"]["message"] == "deploying ********"
    finally:
        env.unlink()


def leaked(host, out: str) -> list[str]:
    """Where a secret value appears: the push output, logs, history, run/, the lock note."""
    found = []
    values = [*SECRETS.values(), "pa55w0rd-mail"]
    places = {"push output": out}
    for path in [*(host.dir / "deploys").iterdir(), *(host.dir / "run").rglob("*")]:
        if path.is_file() and not path.name.endswith(".sock"):
            places[str(path.relative_to(host.dir))] = path.read_text(errors="replace")
    for where, text in places.items():
        found += [f"{where}: {v[:6]}…" for v in values if v in text]
    return found


def test_extremely_long_output_lines(clean, observe):
    host, work, before = clean
    row = observe("bad input", "a build step printing a 2 MB line and 50,000 lines, then failing")
    step = (
        "python -c \\\"import sys; print('x' * 2_000_000); "
        'print(*range(50_000), sep=chr(10)); sys.exit(4)\\"'
    )
    work.commit("noisy", **{"shipyard.toml": f'build = ["{step}"]\n' + faultlib.NO_BUILD})
    started = time.monotonic()
    out = work.push(fails=True).out
    seconds = time.monotonic() - started
    lines = remote_lines(out)
    assert "✗ build" in out and "exit 4" in out
    assert max(len(ln) for ln in lines) < 500
    # the last 20 lines of the output, and one saying where the rest is
    assert sum("│" in ln for ln in lines) == 21
    assert "earlier line(s) of this output are in the log: `shipyard log mysite" in out
    assert check_invariants(host) == before
    log = (host.dir / "deploys" / f"{entries(host)[-1]['deploy']}.log").read_text()
    assert max(len(ln) for ln in log.splitlines()) < 500
    kept = sum("│" in ln for ln in log.splitlines())  # 2.3 MB of output: both ends, the cut said
    assert "line(s) cut here: the log keeps 1,000,000 characters" in log and kept > 10_000
    row["outcome"] = (
        f"failed in {seconds:.1f}s; the pusher got {len(lines)} lines, the longest "
        f"{max(len(ln) for ln in lines)} characters (last 20 of the output, each cut at 400, "
        f"and where the rest is); the log kept {kept} lines of it, saying where it was cut"
    )


def failed_at(host, work, before: str, phase: str) -> tuple[str, str]:
    """Push; the deploy fails at ``phase``, before the switch: (its ✗ line's detail, output)."""
    n = len(entries(host))
    out = work.push(fails=True).out
    line = next(ln for ln in remote_lines(out) if f"✗ {phase}" in ln)
    assert check_invariants(host) == before
    assert entries(host)[n]["outcome"] == "failed"
    return re.sub(rf"^.*✗ {phase}\s+\d+\.\d+s\s+", "", line), out


def test_a_python_version_the_host_does_not_have(clean, observe):
    host, work, before = clean
    row = observe("bad input", "`.python-version` asks for a Python the host does not have")
    work.commit("old python", **{".python-version": "3.6\n"})
    said, out = failed_at(host, work, before, "venv")
    assert said.startswith(".python-version asks for Python 3.6, which is not installed")
    assert "uv python install 3.6" in out and "download" not in out.lower()
    row["outcome"] = f"deploy failed at venv, no download tried: `{said[:110]}…`"


def test_allowed_hosts_refuse_the_health_probe(clean, observe):
    host, work, before = clean
    row = observe("bad input", "`ALLOWED_HOSTS` without the host the health check sends")
    settings = work.path / "mysite" / "settings.py"
    text = settings.read_text()
    work.commit(
        "prod hosts", **{"mysite/settings.py": text.replace('["*"]', '["www.example.com"]')}
    )
    said, out = failed_at(host, work, before, "restart")
    assert "got 400" in said and "an answer that waiting will not change" in said
    assert "ALLOWED_HOSTS" in out and '[health] host = "your.domain"' in out
    row["outcome"] = (
        "deploy failed at restart after three 400s, not the 30 s timeout; the hint names "
        "ALLOWED_HOSTS and `[health] host`; the old release kept serving"
    )


def test_status_json_after_bad_input(site):
    """Everything above left the app as it was: one live release, nothing running."""
    host, _, _ = site
    data = json.loads(sy(host, "status", "mysite", "--json").stdout)
    assert data["live"]["state"] == "good" and data["deploying"] is None


OPERATE_BAD = [
    (["config", "set", "mysite", "GREETING"], "has no '=': write KEY=VALUE"),
    (["config", "set", "mysite", "9LIVES=1"], "'9LIVES' is not a valid environment variable name"),
    (["config", "unset", "mysite", "NOT_SET"], "NOT_SET is not set in mysite"),
    (["scale", "mysite", "web=-1"], "'web=-1': write TYPE=COUNT"),
    (["scale", "mysite", "web=abc"], "'web=abc': write TYPE=COUNT"),
    (["scale", "mysite", "worker=2"], "mysite has no process type 'worker'"),
    (["restart", "mysite", "--process", "worker"], "mysite has no process type 'worker'"),
    (["logs", "mysite", "--process", "worker"], "mysite has no process type 'worker'"),
    (["run", "mysite", "--"], "no command given"),
    (["config", "nosuchapp"], "no shipyard app at"),
    # `ssh … config set APP 'HOSTS=a b'`: ssh's line split again at the space
    (["config", "set", "mysite", "HOSTS=a", "b"], "is it the rest of HOSTS's value"),
]


def test_operating_commands_bad_input(clean, observe):
    host, _, before = clean
    row = observe(
        "bad input",
        "`config`/`scale`/`restart`/`logs`/`run` with bad input: `config set` without `=`, an "
        "invalid key, `scale web=-1`/`web=abc`, an unknown process type, `run` with no command",
    )
    watched = [host.dir / "shared" / ".env", host.dir / "scale.json", host.dir / "run"]
    state = [p.read_bytes() if p.is_file() else None for p in watched[:2]]
    n = len(entries(host))
    for args, message in OPERATE_BAD:
        result = sy(host, *args, check=False)
        assert result.returncode == 1, (args, result)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert [p.read_bytes() if p.is_file() else None for p in watched[:2]] == state
    assert len(entries(host)) == n and check_invariants(host) == before
    row["outcome"] = "status 1, one line each, nothing changed: e.g. `" + (
        sy(host, *OPERATE_BAD[3][0], check=False).stderr.strip() + "`"
    )


def test_config_set_that_breaks_the_app(clean, observe):
    host, _, before = clean
    row = observe("bad input", "`config set` of a value the app cannot start with")
    env = host.dir / "shared" / ".env"
    old = env.read_bytes() if env.exists() else None
    served = faultlib.fetch(host.port)
    result = sy(host, "config", "set", "mysite", "DJANGO_SETTINGS_MODULE=no.such", check=False)
    assert result.returncode == 1
    assert "failed the health check" in result.stderr or "exited on start" in result.stderr
    assert (
        "↩ processes back on releases/" in result.stdout and ".env back as it was" in result.stdout
    )
    assert (env.read_bytes() if env.exists() else None) == old
    assert faultlib.fetch(host.port) == served and check_invariants(host) == before
    assert entries(host)[-1]["outcome"] == "failed" and entries(host)[-1]["kind"] == "config"
    row["outcome"] = (
        "status 1, the previous processes kept serving, `.env` restored, history `failed`: `"
        + result.stderr.strip().split("; ")[0]
        + "`"
    )
