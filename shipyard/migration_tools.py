"""The migration tools a release uses (Django, Alembic, Flask-Migrate, or the app's own
``migrate``/``migrate_check``): detected, and asked what is applied and pending."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .advisory_lock import unreachable_reason
from .command import Result, in_release
from .context import Deploy
from .errors import CommandFailed, CommandTimedOut, PhaseError
from .report import Skip

PROBE_MARK = "SHIPYARD-PROBE "
ALEMBIC_PROBE = Path(__file__).with_name("alembic_probe.py")


# --- the tools ---------------------------------------------------------------


@dataclass
class Status:
    """What the database has and what the release would still apply, oldest first."""

    applied: list[str]  # Alembic: the database's current heads
    pending: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    heads: list[str] = field(default_factory=list)  # Alembic: the script directory's heads

    def label(self, name: str) -> str:
        return self.labels.get(name, name)


@dataclass
class Plan:
    """How this release's migrations are listed and applied."""

    kind: str  # "django", "alembic" or "command"
    label: str  # what the output calls it
    command: str | None  # what applies them
    check: str | None = None  # an explicit migrate_check, when given
    ini: str = "alembic.ini"  # Alembic: its config, relative to the release
    flask: bool = False  # Alembic run by Flask-Migrate (`flask db upgrade`, in an app context)

    @property
    def default(self) -> str | None:
        """The tool's own "apply everything" command, as the app's users run it."""
        if self.kind == "django":
            return DJANGO_MIGRATE
        if self.kind != "alembic":
            return None
        if self.flask:
            folder = str(Path(self.ini).parent)
            return FLASK_UPGRADE if folder == "migrations" else f"{FLASK_UPGRADE} -d {folder}"
        where = str(Path(self.ini).parent)
        return ALEMBIC_UPGRADE if where == "." else f"cd {where} && {ALEMBIC_UPGRADE}"

    @property
    def listable(self) -> bool:
        return self.check is not None or self.kind in ("django", "alembic")


DJANGO_MIGRATE = "python manage.py migrate --noinput"
ALEMBIC_UPGRADE = "alembic upgrade heads"
FLASK_UPGRADE = "flask db upgrade"
ALEMBIC_SKIP = {".venv", ".shipyard", ".git", "node_modules", "__pycache__"}


def find_alembic(release_dir: Path) -> tuple[str, bool] | None:
    """(alembic.ini relative to the release, run by Flask-Migrate?) — at the root, else one or
    two levels down (``migrations/alembic.ini`` with an ``env.py`` beside it is Flask-Migrate's
    layout: its env.py needs the Flask app)."""
    if (release_dir / "alembic.ini").is_file():
        return "alembic.ini", False
    found = []
    for path in sorted(release_dir.glob("*/alembic.ini")) + sorted(
        release_dir.glob("*/*/alembic.ini")
    ):
        rel = path.relative_to(release_dir)
        if not ALEMBIC_SKIP & set(rel.parts) and not path.parent.is_symlink():
            found.append(rel)
    if not found:
        return None
    ini = found[0]
    env_py = release_dir / ini.parent / "env.py"
    flask = env_py.is_file() and "current_app" in env_py.read_text(errors="replace")
    return str(ini), flask


def detect(release_dir: Path, config) -> Plan | Skip:
    """The plan for a release, from its shipyard.toml and its files."""
    if config.migrate is not None and not config.migrate.strip():
        return Skip('disabled in shipyard.toml (migrate = "")')
    alembic = None if (release_dir / "manage.py").is_file() else find_alembic(release_dir)
    if (release_dir / "manage.py").is_file():
        plan = Plan("django", "Django", None)
    elif alembic is not None:
        ini, flask = alembic
        label = "Flask-Migrate" if flask else "Alembic"
        usual = "migrations/alembic.ini" if flask else "alembic.ini"
        label = label if ini == usual else f"{label} ({ini})"
        plan = Plan("alembic", label, None, None, ini, flask)
    elif config.migrate:
        plan = Plan("command", f"`{config.migrate}`", None)
    else:
        return Skip("none detected (no manage.py or alembic.ini, no migrate in shipyard.toml)")
    plan.command = config.migrate or plan.default
    if config.migrate_check:
        plan.kind, plan.label, plan.check = (
            "command",
            f"`{config.migrate_check}`",
            config.migrate_check,
        )
    return plan


def status(d: Deploy, plan: Plan) -> Status:
    """Ask the tool (or migrate_check) what is applied and what is pending."""
    timeout = float(d.config.migrate_timeout)
    if plan.check is not None:
        return command_status(d, plan.check, timeout)
    if plan.kind == "django":
        return django_status(d, timeout)
    return alembic_status(d, timeout, plan)


def probe_failure(d: Deploy, what: str, ran: Result, timeout: float) -> PhaseError:
    if ran.timed_out:
        return CommandTimedOut(
            ran,
            what,
            f"{what} did not answer within {timeout:g}s and was stopped",
            "is the database locked or slow? (migrate_timeout in shipyard.toml)",
        )
    reason = unreachable_reason(ran.output)
    if reason:
        return CommandFailed(
            ran,
            what,
            f"database unreachable: {d.out.mask(reason)}",
            "check the database and DATABASE_URL in shared/.env; the live release is untouched",
        )
    if ran.exited == 127:
        return CommandFailed(
            ran,
            what,
            f"{what}: command not found (exit 127)",
            "is it installed in the release's virtualenv (requirements) or on PATH?",
        )
    return CommandFailed(ran, what)


def release_python(d: Deploy) -> str:
    return str(d.release / ".venv" / "bin" / "python")


def django_status(d: Deploy, timeout: float) -> Status:
    what = "listing migrations (manage.py showmigrations --plan)"
    ran = in_release(
        d,
        [release_python(d), "manage.py", "showmigrations", "--plan", "--skip-checks", "-v", "1"],
        timeout,
    )
    if ran.exited or ran.timed_out:
        raise probe_failure(d, what, ran, timeout)
    applied, pending = [], []
    for line in ran.output.splitlines():
        match = re.match(r"^\[([ X])\]\s+(\S+)", line)
        if match:
            (applied if match.group(1) == "X" else pending).append(match.group(2))
    return Status(applied, pending)


def alembic_status(d: Deploy, timeout: float, plan: Plan | None = None) -> Status:
    plan = plan or Plan("alembic", "Alembic", ALEMBIC_UPGRADE)
    what = "listing revisions (alembic current/heads)"
    args = [release_python(d), str(ALEMBIC_PROBE), plan.ini] + (["--flask"] if plan.flask else [])
    ran = in_release(d, args, timeout)
    if ran.exited or ran.timed_out:
        for module, package in (("alembic", "alembic"), ("flask_migrate", "Flask-Migrate")):
            if f"No module named '{module}'" in ran.output:
                raise PhaseError(
                    f"{plan.ini} is in the release but {package} is not installed in its "
                    "virtualenv",
                    f"add {package} to the requirements",
                    output=ran.output,
                )
        raise probe_failure(d, what, ran, timeout)
    answer = None
    for line in ran.output.splitlines():
        if line.startswith(PROBE_MARK):
            with suppress(ValueError):
                answer = json.loads(line[len(PROBE_MARK) :])
    if not isinstance(answer, dict) or not {"current", "heads", "pending"} <= answer.keys():
        raise PhaseError(f"{what} gave no answer", output=ran.output)
    pending = [p["revision"] for p in answer["pending"]]
    labels = {p["revision"]: f"{p['revision']} ({p['doc']})" for p in answer["pending"] if p["doc"]}
    return Status(list(answer["current"]), pending, labels, list(answer["heads"]))


def command_status(d: Deploy, check: str, timeout: float) -> Status:
    """``migrate_check`` prints the pending migrations on stdout, one per line (nothing: none
    pending); what it writes to stderr is shown only when it fails."""
    ran = in_release(d, check, timeout, stderr_apart=True)
    if ran.exited or ran.timed_out:
        ran.output = ran.everything
        raise probe_failure(d, f"migrate_check `{check}`", ran, timeout)
    pending = [line.strip() for line in ran.output.splitlines() if line.strip()]
    return Status([], pending)
