"""A small WSGI app: lists notes; /healthz says whether the database answers."""

import json

import sqlalchemy as sa

from notes.db import engine, notes

_engine = None


def app(environ, start_response):
    global _engine
    _engine = _engine or engine()
    path = environ.get("PATH_INFO", "/")
    with _engine.connect() as conn:
        if path == "/healthz":
            conn.execute(sa.text("SELECT 1"))
            body = {"ok": True}
        else:
            rows = conn.execute(sa.select(notes.c.text, notes.c.done)).all()
            body = {"notes": [{"text": t, "done": d} for t, d in rows]}
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response("200 OK", headers)
    return [data]
