"""The old place of the web port's holder: ``python -m shipyard.provision.listen``, in the
``programs.conf`` that deploys wrote before it moved to shipyard/listen.py.

Kept for a holder that supervisord starts from such a file (a host boots before the app's
next deploy rewrites it with ``-m shipyard.listen``); it can go with provision/launch.py.
"""

from shipyard.listen import main

if __name__ == "__main__":
    main()
