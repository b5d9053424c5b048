#!/usr/bin/env bash
# Debian packages the end-to-end tests use; installed only when missing (needs root).
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v tar >/dev/null || need+=(tar)
# ssh tests (tests/e2e/test_ssh.py): a private sshd on loopback, the ssh client, ssh-keygen
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
# PostgreSQL server binaries (initdb, pg_ctl): the migration tests start a throw-away cluster
# (as root, as the postgres user this package creates).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
  || need+=(postgresql)
command -v ip >/dev/null || need+=(iproute2)  # network namespaces for the many-host tests
# the front door (tests/e2e/test_frontdoor.py): nginx and certbot as on a host, pebble (a real
# ACME server) on loopback, headless Chromium with certutil for a throw-away NSS db
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v certbot >/dev/null || need+=(certbot)
command -v pebble >/dev/null || need+=(pebble)
command -v chromium >/dev/null || need+=(chromium)
command -v certutil >/dev/null || need+=(libnss3-tools)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)  # the receiver's TLS certificate (receiver/tls.py)
# scheduled jobs (tests/e2e/test_cron.py): the test starts Debian's cron daemon, `cron -f`
{ [ -x /usr/sbin/cron ] && command -v crontab >/dev/null; } || need+=(cron)

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing packages: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
