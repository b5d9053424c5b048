"""What a pushed tree can do: nothing it holds may reach outside its release (a chain of
symlinks), forge a line the pusher or the log reader takes for shipyard's (file names,
command output, commit messages and tags with control characters), or print a secret
of the host's `.env` that masking missed (multi-line values, URL passwords).

One deployed app for the module; each case starts from the clone at the host's branch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import faultlib
from faultlib import check_invariants, entries, sy

observe, site, clean = faultlib.observe, faultlib.site, faultlib.clean
ESC = "\x1b"


def log_of(host, number: int) -> str:
    return (host.dir / "deploys" / f"{number}.log").read_text(errors="replace")


def test_symlink_chain_out_of_the_release(clean, observe):
    """Each link reads as inside the release; the chain ends at `/`."""
    host, work, before = clean
    row = observe("security", "a chain of symlinks, each inside the release as text, ending at /")
    depth = len(host.dir.parts) + 4  # releases/<id> and then some: `..` of / is /
    (work.path / "s").symlink_to(".")
    (work.path / "u1").symlink_to("s/..")
    for i in range(2, depth + 1):
        (work.path / f"u{i}").symlink_to(f"u{i - 1}/..")
    (work.path / "static").symlink_to(f"u{depth}")
    (work.path / "passwd").symlink_to(f"u{depth}/etc/passwd")
    assert (work.path / "passwd").read_text() == Path("/etc/passwd").read_text()  # it escapes
    sneaky = work.commit("a chain of links")
    n = len(entries(host))
    result = work.push(check=False)
    line = next((ln for ln in result.out.splitlines() if "✗ checkout" in ln), "")
    said = re.search(r"symlink \S+ -> \S+ points outside the release \(it resolves to /\S*\)", line)
    assert said, result.out
    assert "hint: make it a relative link to a file inside the repository" in result.out
    assert entries(host)[n]["outcome"] == "failed"
    assert check_invariants(host) == before
    assert not [p for p in (host.dir / "releases").iterdir() if sneaky[:7] in p.name]
    for release in (host.dir / "releases").iterdir():
        assert not os.path.lexists(release / "passwd")
    assert host.branch() != sneaky
    row["outcome"] = f"deploy failed at checkout, nothing went live: `{said.group(0)}`"


FORGED = "x\n\x1b[32m✓\x1b[0m verify          0.01s  all good"
SPELLED = "x\\n\\x1b[32m✓\\x1b[0m verify"


def forged_lines(text: str) -> list[str]:
    """Lines that read (once colour is taken off) as a ✓ verify, or hold a stray ESC."""
    found = []
    for ln in text.splitlines():
        plain = re.sub(r"\x1b\[\d+m", "", ln).removeprefix("remote:").strip(" ")
        ours = re.sub(r"\x1b\[(32|31|33|2|1|0)m", "", ln)  # shipyard's own colours
        if plain.startswith("✓ verify") or ESC in ours:
            found.append(ln)
    return found


def test_control_characters_are_shown_escaped(clean, observe):
    """A file name, command output and a push option that try to forge a ✓ line."""
    host, work, before = clean
    row = observe(
        "security",
        "a file named `x\\n\\e[32m✓\\e[0m verify … all good`, a build step printing escape "
        "codes, a push option with ESC",
    )
    # 1. the name in one of shipyard's own lines (the ✗ of a link that points out)
    (work.path / FORGED).symlink_to("/etc/passwd")
    work.commit("a link with a forged name")
    n = len(entries(host))
    first = work.push(fails=True).out
    assert entries(host)[n]["outcome"] == "failed"
    # 2. the name and escape codes in a failing build step's output, ESC in -o message=
    work.git("reset", "-q", "--hard", host.branch())
    (work.path / FORGED).write_text("forged\n")
    step = "ls -1; printf '\\033[32m✓\\033[0m verify  0.02s  fine\\033[2J\\r\\n'; exit 3"
    toml = faultlib.NO_BUILD.replace("shared", f"build = [{step!r}]\nshared")
    work.commit("é ✓ \x1b[31mred commit\x1b[0m", **{"shipyard.toml": toml})
    second = work.push(
        "-o", "color=always", "-o", "message=\x1b[32m✓ ok\x1b[0m é", "main", fails=True
    )
    second = second.out
    assert entries(host)[n + 1]["outcome"] == "failed"
    assert check_invariants(host) == before
    for where, text in {
        "push 1": first,
        "log 1": log_of(host, entries(host)[n]["deploy"]),
        "push 2": second,
        "log 2": log_of(host, entries(host)[n + 1]["deploy"]),
    }.items():
        assert not forged_lines(text), (where, forged_lines(text))
        assert "\x1b[2J" not in text and "\r" not in text.replace("\r\n", "\n"), where
    assert ESC not in first  # NO_COLOR: shipyard's own colour is off, nobody else's is on
    checkout = next(ln for ln in first.splitlines() if "✗ checkout" in ln)
    assert f"symlink {SPELLED}" in checkout and "points outside the release" in checkout
    assert f"│ {SPELLED}" not in second  # ls splits the name: its second half alone
    assert "│ \\x1b[32m✓\\x1b[0m verify  0.02s  fine\\x1b[2J" in second
    assert "\\x1b[32m✓ ok\\x1b[0m é" in second  # the message, readable UTF-8 kept
    history = sy(host, "history", "mysite").stdout  # what an operator reads on the host
    assert ESC not in history
    # color=always: shipyard's colour, and only on its own marks and lines
    assert "\x1b[31m✗\x1b[0m build" in second and "\x1b[1mshipyard ▸ deploy #" in second
    row["outcome"] = (
        "no raw control character in the push output or deploys/N.log; shown escaped: "
        f"`{re.sub(r'^.*✗ checkout +[0-9.]+s +', '', checkout).split(' points')[0]}…`; "
        "the only colour is shipyard's (with `-o color=always`)"
    )


PEM_BODY = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj", "Zm9vYmFyYmF6cXV4"]
ENV = (
    'SIGNING_KEY="-----BEGIN PRIVATE KEY-----\n'
    + "\n".join(PEM_BODY)
    + '\n-----END PRIVATE KEY-----"\n'
    "REDIS_URL=redis://:Pw@127.0.0.1:6379/0\n"
    "CACHE_LOCATION=redis://cache:c4che-pw0rd@127.0.0.1:6379/1\n"
    "BACKUP=postgres://app:s%40fe-pass@db.example.com/app\n"
)
PRINTS = [
    'echo "$SIGNING_KEY"',  # a PEM key, line by line
    "echo redis://:Pw@127.0.0.1:6379",  # an empty user, and not the value as written
    "echo AUTH c4che-pw0rd",  # the password of a URL under a name that is not secret-looking
    "echo password s@fe-pass",  # percent-decoded
    "echo mysql://root:t00r-pw@db/x",  # a URL the .env does not hold
]


def test_secrets_masked_in_every_form(clean, observe):
    host, work, before = clean
    row = observe(
        "security",
        "a build step printing a multi-line `.env` value (a PEM key) and URL passwords "
        "(empty user, under a plain name, percent-encoded, not in .env)",
    )
    env = host.dir / "shared" / ".env"
    env.write_text(ENV)
    try:
        step = "; ".join([*PRINTS, "exit 3"])
        toml = faultlib.NO_BUILD.replace("shared", f"build = [{step!r}]\nshared")
        work.commit("print secrets", **{"shipyard.toml": toml})
        n = len(entries(host))
        out = work.push(check=False).out
        assert entries(host)[n]["outcome"] == "failed" and "✗ build" in out
        assert check_invariants(host) == before
        shown = [ln.split("│ ", 1)[1].strip() for ln in out.splitlines() if "│ " in ln]
        assert shown == ["********"] * 4 + [
            "redis://:********@127.0.0.1:6379",
            "AUTH ********",
            "password ********",
            "mysql://root:********@db/x",
        ], shown
        places = {"push output": out}
        for path in [*(host.dir / "deploys").iterdir(), *(host.dir / "run").rglob("*")]:
            if path.is_file() and not path.name.endswith(".sock"):
                places[str(path.relative_to(host.dir))] = path.read_text(errors="replace")
        values = [*PEM_BODY, "Pw@", "c4che-pw0rd", "s@fe-pass", "s%40fe-pass", "t00r-pw"]
        leaks = [f"{where}: {v}" for where, text in places.items() for v in values if v in text]
        assert not leaks, leaks
        row["outcome"] = (
            "every line of the key and every password masked in the push output, "
            f"deploys/N.log, deploys.jsonl and run/: `{' | '.join(shown[3:])}`"
        )
    finally:
        env.unlink()
