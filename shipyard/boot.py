"""Apps come back after a reboot: ``shipyard boot`` and where a host starts it.

``shipyard provision`` has the deploy user's own supervisord started at boot
(by Debian's supervisor package when it is installed, else by a systemd unit,
``shipyard-<user>.service``); that supervisord runs ``shipyard --root ~/apps
boot`` once, which starts every app's own supervisord (the one its deploys
talk to): its programs autostart on the releases recorded in
``run/processes.json``, so each app serves what was live, without a push.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from . import guard, supervisord
from .app import App
from .config import load_host_config
from .errors import ShipyardError

SUPERVISOR_CONF_DIR = Path("/etc/supervisor/conf.d")
SYSTEMD_DIR = Path("/etc/systemd/system")


def apps(root: Path) -> list[App]:
    if not root.is_dir():
        return []
    found = [App(root, d.name) for d in sorted(root.iterdir()) if d.is_dir()]
    return [app for app in found if app.exists()]


def start_all(root: Path) -> int:
    """Start the embedded supervisord of every app that has processes; 1 if any failed."""
    failed = 0
    for app in apps(root):
        try:
            host = load_host_config(app.config_file)
            sv = supervisord.Supervisor(app, host)
            if not sv.settings.embedded:
                print(f"shipyard boot ▸ {app.name}: the system supervisord runs its processes")
                continue
            if not sv.load_state() and not sv.listeners:
                print(f"shipyard boot ▸ {app.name}: no processes")
                continue
            guard.check_not_root(app, host)
            print(f"shipyard boot ▸ {app.name}: supervisord {sv.ensure()}", flush=True)
        except ShipyardError as exc:
            failed += 1
            print(f"shipyard boot ▸ {app.name}: could not start: {exc}", flush=True)
    return 1 if failed else 0


def started_by(app: App) -> tuple[str | None, str]:
    """(what starts the app's processes at boot or None, the fix when nothing does)."""
    try:
        user = pwd.getpwuid(app.dir.stat().st_uid).pw_name
        home = Path(pwd.getpwnam(user).pw_dir)
    except (KeyError, OSError):
        return None, "the app's owner is not a user of this host; start its processes yourself"
    fix = f"as root: shipyard provision --user {user} (sets up the start at boot)"
    if app.root.absolute() != home / "apps":
        return None, f"only {home / 'apps'} is started at boot; or start it yourself"
    if (SUPERVISOR_CONF_DIR / f"shipyard-{user}.conf").is_file():
        return f"the system supervisord ({SUPERVISOR_CONF_DIR}/shipyard-{user}.conf)", fix
    unit = f"shipyard-{user}.service"
    if (SYSTEMD_DIR / "multi-user.target.wants" / unit).exists():
        return f"systemd ({unit}, enabled)", fix
    if (SYSTEMD_DIR / unit).is_file():
        return None, f"as root: systemctl enable {unit}"
    return None, fix
