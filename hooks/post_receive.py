"""The post-receive hook: says what became of the refs git stored itself.

The deploy branch is proc-receive's (it runs the deploy and reports its outcome
to git, which ignores this hook's exit status); git runs this hook only for
refs it accepted, once they are stored. So here: tags, and branches that this
app does not deploy, each with a line saying so.
"""

from __future__ import annotations

import sys

from shipyard.config import load_host_config
from shipyard.guard import safe_umask
from shipyard.repo import hook_app

ZERO = "0" * 40


def main() -> None:
    app = hook_app()
    safe_umask()
    host = load_host_config(app.config_file)
    deploy_ref = f"refs/heads/{host.branch}"
    for line in sys.stdin.read().splitlines():
        _old, new, ref = line.split()
        if ref == deploy_ref or new == ZERO:
            continue  # the deploy branch: proc-receive reported it
        if ref.startswith("refs/tags/"):
            print(f"shipyard ▸ stored tag {ref.removeprefix('refs/tags/')}")
        else:
            print(f"shipyard ▸ stored {ref} (not deployed: this app deploys {host.branch})")
            if app.live_release() is None:  # nothing live: likely `git init`'s other default
                name = ref.removeprefix("refs/heads/")
                print(
                    f"  nothing is live yet: `git push production {name}:{host.branch}` deploys "
                    f"this branch (or `shipyard init {app.name} --branch {name}` on the host "
                    "makes it the one deployed)"
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
