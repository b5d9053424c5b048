"""Run by the release's own Python (never imported by shipyard): Alembic's applied and pending
revisions, the way ``alembic current`` and ``alembic upgrade heads`` see them.

It runs the app's ``env.py`` with a callback that reads the database's current heads and
applies nothing, then walks the script directory from those heads to its own heads. The answer
is one line on stdout (Flask-Migrate's env.py runs inside the Flask app's context, found as
``flask`` finds it): ``SHIPYARD-PROBE {"current": [...], "heads": [...], "pending": [...]}``.
"""

import json
import os
import sys


def main() -> int:
    """``alembic_probe.py [INI] [--flask]``: INI relative to the release (the cwd)."""
    args = [a for a in sys.argv[1:] if a != "--flask"]
    ini = args[0] if args else "alembic.ini"
    if "--flask" in sys.argv:  # Flask-Migrate: its env.py needs the app, in an app context
        sys.path.insert(0, os.getcwd())
        from flask.cli import ScriptInfo, load_dotenv

        load_dotenv()
        app = ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
        with app.app_context():
            config = app.extensions["migrate"].migrate.get_config(os.path.dirname(ini))
            return probe(config)
    # plain Alembic: from the directory of its alembic.ini, where its users run it
    os.chdir(os.path.dirname(ini) or ".")
    from alembic.config import Config

    return probe(Config(os.path.basename(ini)))


def probe(config) -> int:
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)
    seen: dict = {}

    def read_heads(_rev, context):
        seen["current"] = list(context.get_current_heads())
        return []

    with EnvironmentContext(config, script, fn=read_heads, dont_mutate=True):
        script.run_env()
    if "current" not in seen:
        print("env.py did not run the migration context online", file=sys.stderr)
        return 3
    current = seen["current"]
    heads = list(script.get_heads())
    lower = tuple(current) if current else None
    steps = list(script.iterate_revisions("heads", lower, implicit_base=True))
    steps.reverse()  # oldest first: the order `alembic upgrade heads` applies them
    pending = [
        {"revision": rev.revision, "doc": " ".join((rev.doc or "").split())[:60]}
        for rev in steps
        if rev.revision not in current
    ]
    answer = {"current": current, "heads": heads, "pending": pending}
    print("SHIPYARD-PROBE " + json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
