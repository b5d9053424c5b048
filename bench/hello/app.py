"""The smallest WSGI app: what the multi-host bench deploys to see shipyard's own cost per host.

Eight hosts simulated on one small machine boot their web processes on the same cores; with
Django that boot, not shipyard, decides the time. This app boots in a few milliseconds.
"""

from version import GREETING


def app(environ, start_response):
    body = b"ok" if environ.get("PATH_INFO") == "/healthz" else GREETING.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
