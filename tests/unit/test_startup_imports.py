"""What a push loads: the hook and its deploy worker import only what a code-only deploy of
one host without processes uses (each module below costs every push milliseconds otherwise;
the functions that need them import them)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = [
    "dulwich",  # proc-receive frames its pkt-lines; packs for peers import it
    "supervisor.xmlrpc",  # with xmlrpc.client and medusa: only a deploy that talks to supervisord
    "xmlrpc.client",
    "http.client",  # the receiver client, the health probe, webhooks
    "ssl",
    "urllib.request",
    "email.parser",
    "concurrent.futures",  # a group of hosts
    "logging",
    "secrets",
    "configparser",  # alembic.ini
    "getpass",  # with termios: who pushed is SHIPYARD_PUSHER over SSH, the user only locally
]


def loaded(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_the_push_hook_and_its_worker_load_none_of_the_heavy_modules():
    found = loaded(
        "import shipyard.hooks.proc_receive, shipyard.hooks.post_receive\n"
        "import shipyard.worker, shipyard.operate"
    )
    assert "shipyard.deploy" in found
    assert sorted(m for m in HEAVY if m in found) == []


def test_a_supervisor_is_made_without_talking_xml_rpc(tmp_path):
    found = loaded(
        "from shipyard.app import App\n"
        "from shipyard.config import HostConfig\n"
        "from shipyard.supervisord import Supervisor\n"
        f"Supervisor(App.at('mysite', {str(tmp_path)!r}), HostConfig()).load_state()"
    )
    assert "xmlrpc.client" not in found and "supervisor.xmlrpc" not in found


# what the forced SSH command does not load on its way to exec git-receive-pack: every push
# waits for it (the parser, the host config's, dataclasses with inspect, shutil with bz2/lzma)
FORCED_COMMAND_HEAVY = [
    "argparse",
    "tomllib",
    "shipyard.config",
    "typing",
    "dataclasses",
    "inspect",
    "json",
    "shutil",
    "threading",
    "signal",
]


def test_the_forced_ssh_command_loads_no_parser_and_no_host_config(tmp_path):
    found = loaded(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from shipyard import cli\n"
        "from shipyard.guard import safe_umask\n"
        "from shipyard.provision import shell\n"
        "assert cli.forced_command(['ssh-command', 'alice']) is not None\n"
        f"home = Path({str(tmp_path)!r})\n"
        "(home / 'apps' / 'mysite' / 'repo.git').mkdir(parents=True)\n"
        "(home / 'apps' / 'mysite' / 'shipyard.toml').write_text('')\n"
        "decision = shell.decide('git-receive-pack apps/mysite/repo.git', home, home / 'apps',"
        " shell.SHIPYARD_ARGV)\n"
        "assert decision.argv[1:] == ['receive-pack', str(home / 'apps/mysite/repo.git')]\n"
        "shell.record(home, 'alice', 'git-receive-pack apps/mysite/repo.git', 'allowed')"
    )
    assert sorted(m for m in FORCED_COMMAND_HEAVY if m in found) == []
