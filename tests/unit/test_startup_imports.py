"""What a push loads: the hook and its deploy worker import only what a code-only deploy of
one host without processes uses (each module below costs every push milliseconds otherwise;
the functions that need them import them)."""

from __future__ import annotations

import re
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
    "concurrent.futures",  # with logging; a group of hosts runs threads of its own
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


# what the launcher of every process (shipyard/launch.py) would load if its imports grew back:
# ~0.08 s from supervisord's spawn to the program's exec, on every restart's critical path
LAUNCHER_HEAVY = [
    "site",  # -S: nor the editable install's finder (pathlib, re, importlib.util)
    "re",
    "enum",  # with socket's and signal's Python halves
    "socket",
    "signal",
    "typing",
    "collections",
    "contextlib",
    "dataclasses",
    "pathlib",
    "tomllib",  # the host config: parsed as root only when it changed since programs.conf
    "argparse",
    "json",
    "logging",
    "dotenv",  # only for a .env beyond plain NAME=value lines
    "shipyard.app",
    "shipyard.config",
    "shipyard.programs",
    "shipyard.release",
]


def test_the_launcher_loads_only_the_modules_it_uses(tmp_path):
    from shipyard import guard
    from shipyard import programs as prov
    from shipyard.app import App

    app = App(tmp_path, "mysite")
    rid = "20260101T000000Z-aaaaaaa"
    (app.dir / "logs").mkdir(parents=True)
    (app.dir / "shared").mkdir()
    (app.shared / ".env").write_text("# plain lines\nSECRET_KEY=s3cret\n")
    app.config_file.write_text("allow_root = true\n")
    app.release_dir(rid).mkdir(parents=True)
    (app.release_dir(rid) / "Procfile").write_text("worker: echo started $SECRET_KEY\n")
    options, script = prov.launch_options(app, rid, "worker", None, None, "1")
    stamp = guard.allowed_root_stamp(app)  # as programs.conf carries it, run as root
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", "-I", "-S", prov.LAUNCH_SCRIPT]
        + [str(app.dir), rid, "worker", *options, *(["--root-ok", stamp] if stamp else [])]
        + ["--run", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and "started s3cret" in ran.stdout, ran.stderr + ran.stdout
    found = set(re.findall(r"import time:\s*\d+ \|\s*\d+ \|\s*(\S+)", ran.stderr + ran.stdout))
    assert {"shipyard.envfile", "shipyard.stamp", "_socket"} <= found
    assert sorted(m for m in LAUNCHER_HEAVY if m in found) == []


def test_a_handover_talks_to_supervisord_without_an_http_or_xmlrpc_library():
    found = loaded(
        "from shipyard import supervisord\n"
        "try:\n"
        "    supervisord.rpc('/nonexistent.sock', 'getState', (), 1.0)\n"
        "except OSError:\n"
        "    pass\n"
        "supervisord.answer(b'HTTP/1.0 200 OK\\r\\n\\r\\n<methodResponse><params><param>'\n"
        "                   b'<value><int>1</int></value></param></params></methodResponse>')"
    )  # the new web starts after the first calls: their imports come before it
    assert "pyexpat" in found
    assert not {"xmlrpc.client", "http.client", "email.parser", "supervisor.xmlrpc"} & found


def test_a_plain_dotenv_is_read_without_python_dotenv():
    found = loaded(
        "from shipyard import envfile\n"
        "assert envfile.parse('# the app\\nSECRET_KEY=x\\nDEBUG=0\\n', '.env') == "
        "{'SECRET_KEY': 'x', 'DEBUG': '0'}"
    )  # every push reads shared/.env (proc-receive's check, the deploy's checkout)
    assert "dotenv" not in found and "logging" not in found


def test_peer_calls_and_a_health_probe_load_no_http_or_pool_library(tmp_path):
    found = loaded(
        "import socket\n"
        "from pathlib import Path\n"
        "from shipyard import health\n"
        "from shipyard.receiver.client import Peer, PeerError\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]\n"
        "from shipyard.group import Group\n"
        "peer = Peer(f'127.0.0.1:{port}', 'mysite', b'k' * 32)\n"
        "Group([peer, peer]).run(lambda p: p.call('POST', 'switch', {}, retries=0))\n"
        "try:\n"
        f"    health.probe(Path({str(tmp_path / 'none.sock')!r}), '/')\n"
        "except OSError:\n"
        "    pass\n"
    )  # every deploy with peers calls them; every one with processes probes its web
    assert "shipyard.exchange" in found
    unwanted = {"http.client", "email.parser", "ssl", "concurrent.futures", "logging"}
    assert not (unwanted | {"encodings.idna"}) & found
