"""`shipyard provision --proxy`: Debian's nginx and certbot, and the narrow path to reload nginx.

Root's part, once per deploy user:
- ``apt-get install nginx certbot sudo`` when missing;
- ``/etc/nginx/conf.d/shipyard.conf``: nginx includes ``/etc/nginx/shipyard.checked/*.conf``,
  root's copies of the sites the helper checked;
- ``/etc/nginx/shipyard/<user>/``: the user's directory of sites (the user's, 0755);
- ``/usr/local/sbin/shipyard-proxy-reload``: root-owned; it runs root's own copy of
  ``shipyard proxy-reload``, which includes a site only if it is exactly what shipyard renders
  from its spec (paths inside the owner's home), copies it to ``shipyard.checked/``, then
  ``nginx -t`` and ``nginx -s reload``;
- ``/etc/sudoers.d/shipyard-<user>``: the user may run that one command, without arguments;
- ``/etc/cron.d/shipyard-tls-<user>``: twice a day, as the user, ``shipyard tls --all`` renews
  every app's ACME certificate that is due (certbot's own timer renews only root's
  /etc/letsencrypt, not the apps' state in ``<app>/tls/acme``).
Every file is written root-owned in a root-owned directory; nothing the deploy user can change
is followed or run by root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from shipyard.programs import replace_file
from shipyard.tls import renewal_file

HELPER = Path("/usr/local/sbin/shipyard-proxy-reload")
SITES = Path("/etc/nginx/shipyard")
PACKAGES = {"nginx": "/usr/sbin/nginx", "certbot": "/usr/bin/certbot", "sudo": "/usr/bin/sudo"}


@dataclass(frozen=True)
class RootFile:
    path: Path
    text: str
    mode: int


def renewal_command(shipyard_bin: Path, apps: Path) -> str:
    return f"{shipyard_bin} --root {apps} tls --all"


def renewal_entry(user: str, shipyard_bin: Path, apps: Path) -> str:
    """Twice a day at a minute of the user's own; output only on failure (cron mails it)."""
    minute = zlib.crc32(user.encode()) % 60
    return (
        "# shipyard: renew the ACME certificates of the apps in "
        f"{apps} when due (shipyard tls --all)\n"
        # cron's own PATH lacks /usr/sbin, where Debian puts nginx (the reload helper runs it)
        "SHELL=/bin/sh\nPATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n"
        f"{minute} 3,15 * * * {user} {renewal_command(shipyard_bin, apps)} >/dev/null\n"
    )


def root_files(
    user: str, shipyard_bin: Path, apps: Path, etc: Path = Path("/etc")
) -> list[RootFile]:
    """What root writes for ``user`` (apps in ``apps``); ``shipyard_bin`` must be root-owned
    (provision's venv)."""
    helper = (
        "#!/bin/sh\n# shipyard: check the deploy users' nginx sites, then reload nginx.\n"
        f"exec {shipyard_bin} proxy-reload --sites {SITES}\n"
    )
    return [
        RootFile(
            etc / "nginx/conf.d/shipyard.conf",
            f"# shipyard: the deploy users' sites (shipyard domains APP add ...)\n"
            f"include {SITES}.checked/*.conf;\n",
            0o644,
        ),
        RootFile(Path(str(HELPER)), helper, 0o755),
        RootFile(
            etc / f"sudoers.d/shipyard-{user}",
            f'{user} ALL=(root) NOPASSWD: {HELPER} ""\n',
            0o440,
        ),
        RootFile(renewal_file(user, etc), renewal_entry(user, shipyard_bin, apps), 0o644),
    ]


def missing_packages() -> list[str]:
    return [name for name, path in PACKAGES.items() if not os.path.exists(path)]


def configure(user: str, shipyard_bin: Path, apps: Path, dry_run: bool = False) -> list[str]:
    """Install and configure the front door for ``user``; the changes made (or that would be)."""
    import pwd

    changes = []
    need = missing_packages()
    if need:
        changes.append(f"apt-get install {' '.join(need)}")
        if not dry_run:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True, env=env)
    for f in root_files(user, shipyard_bin, apps):
        if f.path.is_file() and not f.path.is_symlink() and f.path.read_text() == f.text:
            continue
        changes.append(f"write {f.path}")
        if not dry_run:
            replace_file(f.path, f.text, f.mode)
    sites = SITES / user
    if not sites.is_dir():
        changes.append(f"create {sites} for {user}")
        if not dry_run:
            SITES.mkdir(mode=0o755, exist_ok=True)
            sites.mkdir(mode=0o755)
            entry = pwd.getpwnam(user)
            os.chown(sites, entry.pw_uid, entry.pw_gid)
    if not dry_run and changes and shutil.which("visudo"):
        subprocess.run(["visudo", "-cqf", f"/etc/sudoers.d/shipyard-{user}"], check=True)
    return changes
