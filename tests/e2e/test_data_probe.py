"""A changed requirement runs the data probe beside the build steps: the release ends as it
would with the probe first, also when the added package changes what the settings say."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import BIN, Host, Work, run
from httpload import fetch

from shipyard import data

pytestmark = pytest.mark.e2e

# the settings name an upload directory only once python-dotenv is installed
SETTINGS_TAIL = """
try:
    import dotenv  # noqa: F401
except ImportError:
    pass
else:
    MEDIA_ROOT = BASE_DIR / "uploads"
"""
# a build step that writes into MEDIA_ROOT when the settings name one
WRITE_UPLOAD = """import os, pathlib
import django
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()
if settings.MEDIA_ROOT:
    root = pathlib.Path(settings.MEDIA_ROOT)
    root.mkdir(exist_ok=True)
    (root / "built.txt").write_text("built")
"""
COLLECTSTATIC = (
    '{ run = "python manage.py collectstatic --noinput -v 0", '
    'inputs = ["*/static/**", "mysite/settings.py"], outputs = ["static"] }'
)
TOML = f"""shared = [".env", "media/"]
build = [
  {COLLECTSTATIC},
  "python write_upload.py",
]
"""


def data_answer(host: Host) -> dict:
    return json.loads((host.live() / ".shipyard" / "data.json").read_text())


def test_an_added_package_that_names_a_data_dir_links_it_before_the_build_steps_count(
    host: Host, work: Work
):
    settings = work.path / "mysite" / "settings.py"
    reqs = (work.path / "requirements.txt").read_text()
    work.commit(
        "uploads when dotenv is there",
        **{
            "shipyard.toml": TOML,
            "write_upload.py": WRITE_UPLOAD,
            "mysite/settings.py": settings.read_text() + SETTINGS_TAIL,
        },
    )
    work.push()
    assert data_answer(host)["found"] == {}
    assert not (host.live() / "uploads").exists()

    # settings unchanged, another venv: the live answer stands in while the probe runs; its
    # answer names uploads/, which is linked, and the build steps run again behind the link
    work.commit("dotenv", **{"requirements.txt": reqs + "python-dotenv>=1.0\n"})
    added = work.push()
    build_line = added.out.split("✓ build")[1].splitlines()[0]
    assert "again: data paths the app names now: uploads" in build_line, added.out
    assert "uploads/ (Django MEDIA_ROOT) is inside the release" in added.out
    live = host.live()
    assert (live / "uploads").is_symlink()
    assert (live / "uploads").resolve() == host.dir / "shared" / "uploads"
    assert (host.dir / "shared" / "uploads" / "built.txt").read_text() == "built"
    assert data_answer(host)["found"] == {"uploads": "dir"}
    assert (live / "static" / "polls" / "style.css").is_file()  # collectstatic's output
    assert fetch(host.port)[0] == 200

    # one more package: the probe answers what the live release said, the steps run once
    (host.dir / "shared" / "uploads" / "built.txt").unlink()
    work.commit("six", **{"requirements.txt": reqs + "python-dotenv>=1.0\nsix\n"})
    again = work.push()
    build_line = again.out.split("✓ build")[1].splitlines()[0]
    assert "again" not in build_line and "2 ran" in build_line, again.out
    assert "is inside the release" not in again.out
    assert (host.live() / "uploads").resolve() == host.dir / "shared" / "uploads"
    assert (host.dir / "shared" / "uploads" / "built.txt").read_text() == "built"
    assert data_answer(host)["found"] == {"uploads": "dir"}
    run(host.live() / ".venv" / "bin" / "python", "-c", "import dotenv, six")
    assert fetch(host.port)[0] == 200


def probes_running(host: Host) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if b"data_probe.py" in cmdline and str(host.dir).encode() in cmdline:
                found.append(int(entry.name))
    return found


# settings that keep the data probe (only it) busy once six is installed
SLOW_PROBE = """
import sys, time
try:
    import six  # noqa: F401
except ImportError:
    pass
else:
    if sys.argv[0].endswith("data_probe.py"):
        time.sleep(30)
"""


def test_a_failing_build_step_stops_the_probe_running_beside_it(host: Host, work: Work):
    reqs = (work.path / "requirements.txt").read_text()
    settings = (work.path / "mysite" / "settings.py").read_text()
    work.commit("a probe slow with six", **{"mysite/settings.py": settings + SLOW_PROBE})
    work.push()
    live = host.live()
    toml = (work.path / "shipyard.toml").read_text()
    work.commit(
        "six, and a build step that fails",
        **{
            "requirements.txt": reqs + "six\n",
            "shipyard.toml": toml.replace("build = [", 'build = [\n  "false",'),
        },
    )
    failed = work.push(fails=True)
    assert "failed at build" in failed.out, failed.out
    assert host.live() == live
    assert probes_running(host) == []  # stopped with the deploy, not left for 30 s
    assert fetch(host.port)[0] == 200


@pytest.fixture(scope="module")
def django_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("django") / "venv"
    run(BIN / "uv", "venv", "-q", "--python", sys.executable, venv)
    run(BIN / "uv", "pip", "install", "-q", "--python", venv / "bin" / "python", "django>=5.1,<5.3")
    return venv / "bin" / "python"


SHAPES = {
    "module": {
        "mysite/settings.py": "from pathlib import Path\nBASE = Path(__file__).parent.parent\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': BASE / 'a.db'},"
        " 'other': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': 'rel.db'},"
        " 'mem': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}\n"
        "MEDIA_ROOT = BASE / 'up'\n",
    },
    "defaults": {"mysite/settings.py": "DEBUG = False\n"},
    "package": {
        "mysite/settings/__init__.py": "from .base import *  # noqa\n",
        "mysite/settings/base.py": "import os\nMEDIA_ROOT = os.path.join(os.getcwd(), 'm')\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'x'}}\n",
    },
    "uses django.conf": {
        "mysite/settings.py": "from django.conf import global_settings\n"
        "MEDIA_ROOT = global_settings.MEDIA_ROOT or 'media'\n",
    },
}
# the same probe, asking django.conf itself (its fallback), for what the answer must be
BY_DJANGO_CONF = (
    "import sys; sys.argv = ['data_probe.py']; import data_probe as p\n"
    "def refuse(module): raise RuntimeError\n"
    "p.django_settings = refuse; p.main()\n"
)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_probe_reads_the_settings_as_django_conf_does(tmp_path, django_python, shape):
    app = tmp_path / "app"
    for rel, text in SHAPES[shape].items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    (app / "mysite" / "__init__.py").write_text("")
    (app / "manage.py").write_text(
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    direct = run(django_python, data.PROBE, cwd=app, env=env).stdout
    reference = run(django_python, "-c", BY_DJANGO_CONF, cwd=app,
                    env={**env, "PYTHONPATH": str(data.PROBE.parent)}).stdout  # fmt: skip
    assert direct.startswith("SHIPYARD-PROBE ") and direct == reference
