#!/usr/bin/env bash
# The classic script deploy that shipyard is measured against: what a team writes by hand.
#   baseline.sh DEPLOY_DIR GIT_DIR REF [PORT]
# A fresh directory per deploy (git archive), a new venv with pip, migrate, collectstatic, the
# `current` symlink; with a PORT, a restart the way such scripts do it: the running gunicorn
# (found by its pidfile) gets TERM and is waited for, then the new release's gunicorn starts
# daemonized on 127.0.0.1:PORT. The script returns once that gunicorn is forked, not when it
# answers (the bench waits for the new code to be served).
set -euo pipefail
deploy_dir=$1 git_dir=$2 ref=$3 port=${4:-}
release="$deploy_dir/releases/$(date +%Y%m%d%H%M%S%N)"
mkdir -p "$release"
git --git-dir="$git_dir" archive "$ref" | tar -x -C "$release"
python3 -m venv "$release/venv"
"$release/venv/bin/pip" install --quiet -r "$release/requirements.txt"
cd "$release"
if [ -f "$deploy_dir/shared/.env" ]; then set -a; . "$deploy_dir/shared/.env"; set +a; fi
./venv/bin/python manage.py migrate --noinput -v 0
./venv/bin/python manage.py collectstatic --noinput -v 0
ln -sfn "$release" "$deploy_dir/current.tmp" && mv -T "$deploy_dir/current.tmp" "$deploy_dir/current"
[ -n "$port" ] || exit 0

pidfile="$deploy_dir/gunicorn.pid"
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  # gunicorn removes its pidfile on the way out; give it 30 s, then KILL
  for _ in $(seq 300); do
    { [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null; } || break
    sleep 0.1
  done
  if [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -f "$pidfile"
fi
cd "$deploy_dir/current"
./venv/bin/gunicorn mysite.wsgi --workers 2 --bind "127.0.0.1:$port" \
  --daemon --pid "$pidfile" --log-file "$deploy_dir/gunicorn.log"
