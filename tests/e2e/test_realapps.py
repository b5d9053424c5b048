"""Apps as the frameworks' own tools make them (`django-admin startproject`, a Flask app with
Flask-Migrate and Flask-SQLAlchemy as their docs show), deployed as a new user would."""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import urllib.parse
from pathlib import Path

import psycopg
import pytest
from conftest import BIN, Host, Work, processes_under, run, shipyard
from httpload import fetch
from pgcluster import pg_url, postgres  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """A virtualenv with the frameworks' command-line tools (uv's cache makes it quick)."""
    venv = tmp_path_factory.mktemp("tools") / "venv"
    run(BIN / "uv", "venv", "-q", "--python", os.sys.executable, venv)
    packages = ["django>=5.1,<5.3", "flask", "flask-sqlalchemy", "flask-migrate"]
    run(BIN / "uv", "pip", "install", "-q", "--python", venv / "bin" / "python", *packages)
    return venv / "bin"


def new_work(path: Path, host: Host) -> Work:
    """An empty repository with `production` pointing at the host."""
    path.mkdir(parents=True, exist_ok=True)
    work = Work(path)
    work.git("init", "-q", "-b", "main")
    work.git("remote", "add", "production", str(host.repo))
    return work


def startproject(tools: Path, path: Path, host: Host, **extra: str) -> Work:
    """`django-admin startproject mysite .`, touched only for production (DEBUG, ALLOWED_HOSTS)."""
    path.mkdir()
    run(tools / "django-admin", "startproject", "mysite", ".", cwd=path)
    settings = path / "mysite" / "settings.py"
    text = settings.read_text().replace("DEBUG = True", "DEBUG = False")
    text = text.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['localhost', '127.0.0.1']")
    settings.write_text(text)
    work = new_work(path, host)
    work.commit(
        "startproject",
        **{
            "requirements.txt": "django>=5.1,<5.3\ngunicorn>=23\n",
            "Procfile": "web: gunicorn mysite.wsgi --bind 127.0.0.1:$PORT\n",
            "shipyard.toml": '[health]\npath = "/admin/login/"\n',
            **extra,
        },
    )
    return work


def in_live(host: Host, *args: str) -> str:
    """Run a command in the live release with its venv, as `shipyard run` would."""
    live = host.live()
    env = {**os.environ, "PATH": f"{live / '.venv' / 'bin'}:{os.environ['PATH']}"}
    return run(*args, cwd=live, env=env).stdout


def web_pids(host: Host) -> list[int]:
    return [p for p in processes_under(host.dir / "releases") if b"gunicorn" in cmdline(p)]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def release_of(pid: int) -> str:
    return Path(os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")).name


DJANGO_WRITE = """
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
User.objects.create_user("bob")
default_storage.save("avatars/bob.txt", ContentFile(b"bob's face"))
"""
DJANGO_READ = """
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
names = list(User.objects.values_list("username", flat=True))
print(names, default_storage.open("avatars/bob.txt").read())
"""


def test_startproject_keeps_its_data_and_releases_in_use(tmp_path, host, tools):
    work = startproject(tools, tmp_path / "site", host)
    settings = work.path / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\nMEDIA_ROOT = BASE_DIR / 'media'\n")
    work.commit("uploads")
    first = work.push()
    # the SQLite file and MEDIA_ROOT are found by asking Django, linked from shared/, said once
    assert "db.sqlite3 (Django DATABASES['default']['NAME']) is inside the release" in first.out
    assert "media/ (Django MEDIA_ROOT) is inside the release" in first.out
    assert (host.dir / "shared" / "db.sqlite3").is_file()
    in_live(host, "python", "manage.py", "shell", "-c", DJANGO_WRITE)
    assert fetch(host.port, "/admin/login/")[0] == 200

    work.commit("a change", **{"mysite__version.py": "VERSION = 2\n"})
    second = work.push()
    assert "is inside the release" not in second.out
    answer = json.loads((host.live() / ".shipyard" / "data.json").read_text())
    assert answer["found"] == {"db.sqlite3": "file", "media": "dir"}  # reused while unchanged
    assert re.search(r"✓ data .*media/, db\.sqlite3 linked from shared/", second.out)
    assert "nothing pending (Django: 18 applied)" in second.out  # not re-applied on an empty db
    assert "['bob'] b\"bob's face\"" in in_live(
        host, "python", "manage.py", "shell", "-c", DJANGO_READ
    )

    # a data directory that cannot be linked is refused before the switch, naming it
    live = host.live().name
    settings.write_text(settings.read_text().replace("BASE_DIR / 'media'", "BASE_DIR / 'mysite'"))
    work.commit("media in the code")
    refused = work.push(check=False)
    assert "failed at data: data inside the release would be lost" in refused.out, refused.out
    assert "Django MEDIA_ROOT is releases/" in refused.out and "holds the app's code" in refused.out
    assert 'shared = [".env", "mysite/"]' in refused.out
    assert host.live().name == live
    settings.write_text(settings.read_text().replace("BASE_DIR / 'mysite'", "BASE_DIR / 'media'"))
    work.commit("media back")

    # no release is pruned while its processes run: -o no-restart leaves them on the old one
    host.set_host_config(keep=1)
    [serving] = {release_of(p) for p in web_pids(host)}
    for n in range(3):
        work.commit(f"quiet change {n}", **{"mysite__version.py": f"VERSION = {n + 3}\n"})
        work.push("-o", "no-restart", "main")
    assert serving in host.releases() and {release_of(p) for p in web_pids(host)} == {serving}
    assert len(host.releases()) == 2  # the live one and the one still serving
    assert fetch(host.port, "/admin/login/")[0] == 200
    work.commit("restart now", **{"mysite__version.py": "VERSION = 9\n"})
    work.push()
    assert host.releases() == [host.live().name]  # its processes moved on: pruned now
    assert "['bob']" in in_live(host, "python", "manage.py", "shell", "-c", DJANGO_READ)


# DATABASES from DATABASE_URL in the environment (shared/.env), as dj-database-url's docs show
PG_SETTINGS = """
import dj_database_url

DATABASES = {"default": dj_database_url.config(conn_max_age=600)}
"""
PG_REQUIREMENTS = "django>=5.1,<5.3\ngunicorn>=23\ndj-database-url\npsycopg[binary]\n"


def admin_login(port: int, username: str, password: str) -> tuple[int, str]:
    """Log in to Django's admin as a browser does: (status, Location) of the form's POST."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/admin/login/")
        answer = conn.getresponse()
        page = answer.read().decode()
        cookie = answer.getheader("Set-Cookie", "").split(";")[0]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
        body = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token, "username": username, "password": password}
        )
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/admin/login/?next=/admin/", body, headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location", "")
    finally:
        conn.close()


def test_startproject_on_postgresql_keeps_its_rows(tmp_path, host, tools, pg_url):  # noqa: F811
    work = startproject(tools, tmp_path / "site", host, **{"requirements.txt": PG_REQUIREMENTS})
    settings = work.path / "mysite" / "settings.py"
    text = re.sub(r"(?ms)^DATABASES = \{.*?^\}\n", PG_SETTINGS, settings.read_text())
    assert "dj_database_url" in text and "sqlite3" not in text
    settings.write_text(text)
    work.commit("DATABASES from DATABASE_URL")
    (host.dir / "shared" / ".env").write_text(
        f"DATABASE_URL={pg_url}\nDJANGO_SUPERUSER_PASSWORD=pg-admin-pw-4711\n"
    )
    first = work.push()
    assert re.search(r"✓ migrate .* 18 applied: contenttypes\.0001_initial", first.out), first.out
    assert "under the database lock" in first.out
    # a PostgreSQL app keeps no data inside the release: nothing to link, nothing refused
    assert "is inside the release" not in first.out and "refused" not in first.out
    assert re.search(r"- data .*no data inside the release", first.out), first.out
    assert re.search(r"- data-check .*no data written inside the release", first.out)
    assert (
        not list((host.dir / "shared").glob("*.sqlite3"))
        and not (host.dir / "run" / "data.json").exists()
    )

    # rows written through manage.py, run by shipyard in the live release with shared/.env
    made = shipyard(
        "--root", host.root, "run", "mysite", "--",
        "python", "manage.py", "createsuperuser", "--noinput", "--username", "bob",
        "--email", "bob@example.com",
    )  # fmt: skip
    assert "Superuser created successfully" in made.stdout
    assert admin_login(host.port, "bob", "pg-admin-pw-4711") == (302, "/admin/")
    with psycopg.connect(pg_url) as conn:
        applied = conn.execute("SELECT app, name, applied FROM django_migrations").fetchall()
    assert len(applied) == 18

    work.commit("a change", **{"mysite__version.py": "VERSION = 2\n"})
    second = work.push()
    assert "nothing pending (Django: 18 applied;" in second.out, second.out
    assert re.search(r"- data .*no data inside the release", second.out), second.out
    with psycopg.connect(pg_url) as conn:
        users = conn.execute("SELECT username, is_superuser FROM auth_user").fetchall()
        again = conn.execute("SELECT app, name, applied FROM django_migrations").fetchall()
    assert users == [("bob", True)]
    assert sorted(again) == sorted(applied)  # applied once: the same 18 rows, same times
    assert admin_login(host.port, "bob", "pg-admin-pw-4711") == (302, "/admin/")
    assert admin_login(host.port, "bob", "wrong")[0] == 200  # the form again: a real check
    assert {release_of(p) for p in web_pids(host)} == {host.live().name}


def get_as(port: int, path: str, host: str, proto: str = "") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": host, **({"X-Forwarded-Proto": proto} if proto else {})}
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_health_check_of_a_production_django_fails_fast_with_the_fix(tmp_path, host, tools):
    work = startproject(tools, tmp_path / "site", host)
    settings = work.path / "mysite" / "settings.py"
    text = settings.read_text().replace(
        "ALLOWED_HOSTS = ['localhost', '127.0.0.1']", "ALLOWED_HOSTS = ['www.example.com']"
    )
    settings.write_text(text + "\nSECURE_SSL_REDIRECT = True\n")
    toml = '[health]\npath = "/admin/"\n'
    work.commit("production settings", **{"shipyard.toml": toml})

    # Host: localhost is not in ALLOWED_HOSTS: 400, which waiting does not change
    out = work.push(check=False).out
    assert "failed the health check (GET /admin/ with Host: localhost: got 400" in out, out
    assert "an answer that waiting will not change" in out
    assert "ALLOWED_HOSTS" in out and '[health] host = "your.domain"' in out

    # the domain is sent: now the plain-HTTP probe is redirected to https
    toml += 'host = "www.example.com"\n'
    work.commit("health host", **{"shipyard.toml": toml})
    out = work.push(check=False).out
    assert "with Host: www.example.com: got 301 → https://www.example.com/admin/" in out, out
    assert "SECURE_SSL_REDIRECT" in out and "[health] https = true" in out

    # over "https" the admin redirects to its login page
    settings.write_text(
        settings.read_text() + "SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https')\n"
    )
    toml += "https = true\n"
    work.commit("behind TLS", **{"shipyard.toml": toml})
    out = work.push(check=False).out
    assert "got 302 → /admin/login/?next=/admin/" in out, out
    assert "redirects to a login page" in out and "[health] status = [200, 302]" in out
    assert not host.releases()  # nothing went live, nothing half-made is left

    # a list of statuses accepts the redirect
    work.commit("accept", **{"shipyard.toml": toml + "status = [200, 302]\n"})
    out = work.push().out
    assert "healthy (GET /admin/ 200/302)" in out, out
    assert get_as(host.port, "/admin/login/", "www.example.com", "https") == 200


def test_health_check_of_a_startproject_without_a_page_at_root_names_the_path_setting(
    tmp_path, host, tools
):
    # DEBUG = False: Django's "it worked" page is gone and / answers 404 (waiting might change
    # that, so the probe waits: here 3 s)
    work = startproject(
        tools, tmp_path / "site", host, **{"shipyard.toml": "[health]\ntimeout = 3\n"}
    )
    out = work.push(fails=True).out
    assert "failed the health check (GET /: got 404, wanted 200, after 3s)" in out, out
    assert "the app has no page at / (a Django project with DEBUG = False" in out
    assert (
        '[health] path in shipyard.toml to one that answers 200, e.g. path = "/admin/login/"' in out
    )
    assert not host.releases()
    work.commit("health path", **{"shipyard.toml": '[health]\npath = "/admin/login/"\n'})
    assert "healthy (GET /admin/login/ 200)" in work.push().out
    assert fetch(host.port, "/admin/login/")[0] == 200


FLASK_APP = """from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///project.db"
db.init_app(app)
migrate = Migrate(app, db)


class User(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(unique=True)
{extra}

@app.route("/")
def index():
    return str(db.session.execute(db.select(db.func.count(User.id))).scalar())
"""
ADD_BOB = """
from hello import User, app, db
with app.app_context():
    db.session.add(User(username="bob"))
    db.session.commit()
"""


def test_flask_migrate_revisions_listed_and_applied_data_kept(tmp_path, host, tools):
    path = tmp_path / "hello"
    path.mkdir()
    (path / "hello.py").write_text(FLASK_APP.format(extra=""))
    flask = [tools / "flask", "--app", "hello", "db"]
    run(*flask, "init", cwd=path)
    run(*flask, "migrate", "-m", "users", cwd=path)
    work = new_work(path, host)
    work.commit(
        "flask app",
        **{
            ".gitignore": "instance/\n__pycache__/\n",
            "requirements.txt": "flask\nflask-sqlalchemy\nflask-migrate\ngunicorn\n",
            "Procfile": "web: gunicorn hello:app --bind 127.0.0.1:$PORT\n",
        },
    )
    (host.dir / "shared" / ".env").write_text("FLASK_APP=hello\n")  # not found without it
    first = work.push()
    assert re.search(r"migrate: 1 pending \(Flask-Migrate\):\s+remote:\s+\w+ \(users\)", first.out)
    assert re.search(r"✓ migrate .*1 applied", first.out), first.out
    assert "instance/ (Flask's instance folder) is inside the release" in first.out
    in_live(host, "python", "-c", ADD_BOB)
    assert fetch(host.port, "/") == (200, "1")

    run(*flask, "upgrade", cwd=path)
    (path / "hello.py").write_text(FLASK_APP.format(extra="    email: Mapped[str | None]"))
    run(*flask, "migrate", "-m", "email", cwd=path)
    work.commit("email")
    second = work.push()
    assert re.search(r"migrate: 1 pending \(Flask-Migrate\):\s+remote:\s+\w+ \(email\)", second.out)
    assert fetch(host.port, "/") == (200, "1")  # bob is still there, on the new schema
    db = sqlite3.connect(host.dir / "shared" / "instance" / "project.db")
    assert [r[1] for r in db.execute("PRAGMA table_info(user)")] == ["id", "username", "email"]


NOTES_WSGI = """import os

import sqlalchemy as sa

engine = sa.create_engine(os.environ["DATABASE_URL"])


def app(environ, start_response):
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text("SELECT title FROM notes ORDER BY id"))]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [", ".join(names).encode()]
"""
NOTES_TABLE = """    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
    )
"""
NOTES_COLUMN = '    op.add_column("notes", sa.Column("done", sa.Boolean, server_default="false"))\n'


def alembic_revision(tools: Path, backend: Path, message: str, upgrade: str) -> str:
    """`alembic revision -m MESSAGE`, its upgrade() filled in: the new revision's id."""
    made = run(tools / "alembic", "revision", "-m", message, cwd=backend).stdout
    path = Path(re.search(r"Generating (\S+\.py)", made)[1])
    text = path.read_text().replace("    pass\n", upgrade, 1)
    path.write_text(
        text.replace("from alembic import op", "import sqlalchemy as sa\nfrom alembic import op")
    )
    return re.search(r"^revision: str = '(\w+)'", text, re.M)[1]


def test_alembic_in_a_subdirectory_on_postgresql_listed_applied_rows_kept(
    tmp_path,
    host,
    tools,
    pg_url,  # noqa: F811
):
    path = tmp_path / "notes"
    backend = path / "backend"
    backend.mkdir(parents=True)
    run(tools / "alembic", "init", "migrations", cwd=backend)  # backend/alembic.ini
    env_py = backend / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text()
        .replace(
            "config = context.config\n",
            "config = context.config\n"
            'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n',
        )
        .replace("from logging.config", "import os\nfrom logging.config")
    )
    first_rev = alembic_revision(tools, backend, "notes", NOTES_TABLE)
    work = new_work(path, host)
    work.commit(
        "notes app, its alembic in backend/",
        **{
            "backend__app.py": NOTES_WSGI,
            "requirements.txt": "alembic\nsqlalchemy\npsycopg[binary]\ngunicorn\n",
            "Procfile": "web: gunicorn --chdir backend app:app --bind 127.0.0.1:$PORT\n",
            "shipyard.toml": '[health]\npath = "/"\n',
        },
    )
    url = pg_url.replace("postgresql://", "postgresql+psycopg://")
    (host.dir / "shared" / ".env").write_text(f"DATABASE_URL={url}\n")
    first = work.push()
    assert re.search(
        rf"migrate: 1 pending \(Alembic \(backend/alembic\.ini\).*\):\s+remote:\s+{first_rev}",
        first.out,
    ), first.out
    assert re.search(r"✓ migrate .*1 applied", first.out)
    assert "is inside the release" not in first.out
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO notes (title) VALUES ('written after deploy 1')")
    assert fetch(host.port, "/") == (200, "written after deploy 1")
    # its web runs in backend/ (gunicorn --chdir): still the release's, for verify and ps
    listed = shipyard("--root", host.root, "processes", "mysite").stdout
    assert re.search(rf"web\.1 .* {host.live().name}  \(blue, :\d+, live\)", listed), listed

    second_rev = alembic_revision(tools, backend, "done flag", NOTES_COLUMN)
    work.commit("done flag")
    second = work.push()
    assert re.search(rf"1 pending \(Alembic.*\):\s+remote:\s+{second_rev}", second.out), second.out
    assert fetch(host.port, "/") == (200, "written after deploy 1")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(second_rev,)]
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
        ).fetchall()
    assert sorted(c[0] for c in columns) == ["done", "id", "title"]


HELLO_WSGI = """def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
"""
MIGRATE_DB = """import sqlite3
import urllib.parse
db = sqlite3.connect("data.db")
db.execute("CREATE TABLE IF NOT EXISTS runs (n INTEGER)")
db.execute("INSERT INTO runs VALUES (1)")
db.commit()
"""


def test_a_migrate_command_without_check_is_unknown_and_its_sqlite_kept(tmp_path, host):
    path = tmp_path / "hello"
    work = new_work(path, host)
    work.commit(
        "a plain WSGI app with its own migrate script",
        **{
            "hello.py": HELLO_WSGI,
            "migrate_db.py": MIGRATE_DB,
            "requirements.txt": "gunicorn>=23\n",
            "Procfile": "web: gunicorn hello:app --bind 127.0.0.1:$PORT\n",
            "shipyard.toml": 'migrate = "python migrate_db.py"\n',
        },
    )
    first = work.push()
    # the database the command wrote inside the release is moved out before the switch
    assert "data.db is an SQLite database written inside the release" in first.out
    work.commit("two", **{"hello.py": HELLO_WSGI.replace("hello", "hello again")})
    second = work.push()
    assert "an SQLite database written inside" not in second.out
    assert "data.db linked from shared/ (detected)" in second.out
    runs = sqlite3.connect(host.dir / "shared" / "data.db").execute("SELECT count(*) FROM runs")
    assert runs.fetchone() == (2,)  # deploy 2 migrated the same database, not a new one
    assert fetch(host.port, "/") == (200, "hello again")

    releases = host.releases()
    manifest = json.loads((host.live() / ".shipyard" / "release.json").read_text())
    assert manifest["migrations"] is None  # unknown, not "none applied"
    lines = shipyard("--root", host.root, "releases", "mysite").stdout.splitlines()
    assert re.search(rf"{releases[-1]} .* \?  ", next(ln for ln in lines if releases[-1] in ln))
    out = shipyard("--root", host.root, "rollback", "mysite")
    assert f"migrations may have run since {releases[-2]}: deploy #2 ran a migrate" in (
        out.stdout + out.stderr
    )


# --- the host's pip configuration ---------------------------------------------


def make_wheel(folder: Path, name: str = "greeting", version: str = "1.0") -> Path:
    """A pure-Python wheel, written by hand: nothing in it comes from outside the test."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}.py": "HELLO = 'hello from the local index'\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a certificate it signed for 127.0.0.1: (ca, cert, key)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "srv.pem", folder / "srv.key", folder / "srv.csr"
    ext = folder / "srv.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    run(*openssl, "-x509", "-keyout", ca_key, "-out", ca, "-subj", "/CN=shipyard test CA")
    run(*openssl, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run(
        "openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return ca, cert, key


@pytest.fixture
def tls_index(tmp_path):
    """A package index (PEP 503) over HTTPS on loopback, its certificate from the test's CA."""
    import functools
    import hashlib
    import http.server
    import ssl
    import threading

    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    wheel = make_wheel(root / "files")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "greeting").mkdir(parents=True)
    (root / "simple" / "greeting" / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n'
    )
    ca, cert, key = tls_files(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/simple", ca
    server.shutdown()
    server.server_close()


def test_uv_uses_the_hosts_pip_index_and_cert(tmp_path, host, tls_index):
    index, ca = tls_index
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {index}\ncert = {ca}\n")
    # a host whose pip is set up in pip.conf, nothing set for uv (PIP_CONFIG_FILE: this
    # test's own file, so nothing outside it changes)
    drop = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "PIP_INDEX_URL", "UV_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"PIP_CONFIG_FILE": str(conf)}
    path = tmp_path / "app"
    work = new_work(path, host)
    work.commit("needs greeting", **{"requirements.txt": "greeting==1.0\n", "main.py": ""})
    pushed = run("git", "push", "production", "main", cwd=path, env=env, check=False)
    out = pushed.stdout + pushed.stderr
    assert f"pip's cert and index-url from {conf}" in out, out
    assert "live:" in out
    code = "import greeting; print(greeting.HELLO)"
    assert in_live(host, "python", "-c", code).strip() == "hello from the local index"

    # the CA in the system store only (in a mount namespace of this push alone, so nothing
    # outside it changes): uv is told to use the system store
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = tmp_path / "system-bundle.pem"
    bundle.write_text(system.read_text() + ca.read_text())
    work.commit("again", **{"requirements.txt": "greeting==1.0\n# rebuilt\n"})
    script = f"mount --bind {bundle} {system} && exec git push production main"
    # no pip config file at all (no cert = anywhere): the index from PIP_INDEX_URL
    only = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index, "UV_NO_CACHE": "1"}
    pushed = run("unshare", "-m", "sh", "-c", script, cwd=path, env=env | only)
    out = pushed.stdout + pushed.stderr
    assert "✓ venv" in out and "live:" in out, out

    conf.write_text(f"[global]\nindex-url = {index}\ncert = {ca}\n")
    doctor = shipyard("--root", host.root, "doctor", "mysite", env=env, check=False).stdout
    assert re.search(rf"✓ index +{re.escape(index)} answers \(HTTP 404", doctor), doctor
    conf.write_text(f"[global]\nindex-url = {index}\n")  # the CA is not trusted without it
    doctor = shipyard("--root", host.root, "doctor", "mysite", env=env, check=False).stdout
    assert re.search(rf"✗ index +{re.escape(index)} cannot be reached .*CERTIFICATE", doctor)


# --- the app's Python ----------------------------------------------------------


def other_installed_python() -> str | None:
    """An installed Python version other than the one shipyard runs on, if the host has one."""
    listed = run(
        BIN / "uv", "python", "list", "--only-installed", "--no-python-downloads",
        "--output-format", "json", check=False,
    ).stdout  # fmt: skip
    mine = os.sys.version.split()[0]
    versions = {p["version"] for p in json.loads(listed or "[]") if p.get("version")}
    others = sorted(v for v in versions if v != mine and re.fullmatch(r"\d+\.\d+\.\d+", v))
    return others[0] if others else None


def test_python_version_file_picks_an_installed_python_or_says_what_there_is(tmp_path, host):
    path = tmp_path / "app"
    work = new_work(path, host)
    version = other_installed_python() or os.sys.version.split()[0]
    work.commit(
        "pinned python",
        **{".python-version": f"{version}\n", "requirements.txt": "six\n", "main.py": ""},
    )
    work.push()
    code = "import platform; print(platform.python_version())"
    assert in_live(host, "python", "-c", code).strip() == version

    work.commit("an old python", **{".python-version": "3.6\n"})
    out = work.push(check=False).out
    assert (
        ".python-version asks for Python 3.6, which is not installed on this host (it has: " in out
    )
    assert f"{version}" in out.split("it has: ", 1)[1].split(")")[0]
    assert "uv python install 3.6" in out and "download" not in out.lower()

    # without .python-version, pyproject.toml's requires-python is what the app asks for
    work.git("rm", "-q", ".python-version")
    project = '[project]\nname = "app"\nversion = "1"\nrequires-python = "==3.6.*"\n'
    work.commit("requires-python", **{"pyproject.toml": project})
    out = work.push(check=False).out
    assert "requires-python in pyproject.toml asks for Python ==3.6.*, which is not" in out, out
    work.commit("a python it has", **{"pyproject.toml": project.replace("==3.6.*", f"=={version}")})
    work.push()
    assert in_live(host, "python", "-c", code).strip() == version


# --- uwsgi ----------------------------------------------------------------------

UWSGI_APP = """def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{text}"]
"""


def test_uwsgi_web_is_stopped_with_int_not_reloaded_by_term(tmp_path, host):
    path = tmp_path / "app"
    work = new_work(path, host)
    work.commit(
        "uwsgi",
        **{
            "hello.py": UWSGI_APP.format(text="one"),
            "requirements.txt": "pyuwsgi\n",  # uWSGI itself, prebuilt (no compiler run)
            "Procfile": "web: uwsgi --http-socket 127.0.0.1:$PORT --wsgi-file hello.py "
            "--master --processes 1 --need-app\n",
            # were the old web sent TERM, it would reload and be killed only after this
            "shipyard.toml": "stop_grace = 300\n",
        },
    )
    work.push()
    assert fetch(host.port, "/") == (200, "one")
    conf = (host.dir / "run" / "programs.conf").read_text()
    assert "stopsignal = INT" in conf
    [old] = [p for p in processes_under(host.dir / "releases") if b"uwsgi" in cmdline(p)][:1]

    work.commit("two", **{"hello.py": UWSGI_APP.format(text="two")})
    work.push()
    assert fetch(host.port, "/") == (200, "two")
    assert not Path(f"/proc/{old}").exists()
    log = (host.dir / "logs" / "web.1.log").read_text()
    assert "goodbye to uWSGI" in log and "reloading uWSGI" not in log, log[-2000:]


# --- the web port ---------------------------------------------------------------


def test_init_port_on_an_existing_app_moves_the_web_at_the_next_deploy(tmp_path, host):
    from conftest import free_port, make_work

    work = make_work(tmp_path / "work", host)
    work.push()
    old = host.port
    assert fetch(old, "/healthz")[0] == 200
    new = free_port()
    out = shipyard("--root", host.root, "init", "mysite", "--port", str(new)).stdout
    assert f"set port = {new} in shipyard.toml, was {old}" in out
    assert "nothing to do" not in out
    assert host.port == new and fetch(old, "/healthz")[0] == 200  # moved by the next deploy
    work.commit("a change", **{"mysite__version.py": 'GREETING = "moved"\n'})
    work.push()
    assert fetch(new, "/healthz")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        fetch(old, "/healthz")
    refused = shipyard("--root", host.root, "init", "mysite", "--port", "70000", check=False)
    assert refused.returncode != 0 and "a port is 1-65535" in refused.stderr + refused.stdout
