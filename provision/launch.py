"""The old place of the launcher: ``python -m shipyard.provision.launch``, the command of every
program in the ``programs.conf`` that deploys wrote before it moved to shipyard/launch.py.

Kept so those programs still start (supervisord restarts one, a host boots) until the next
deploy or ``shipyard restart`` of each app rewrites its ``programs.conf`` with
``-m shipyard.launch``. It can go once every app on every host has deployed since.
"""

from shipyard.launch import main

if __name__ == "__main__":
    main()
