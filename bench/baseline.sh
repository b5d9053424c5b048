#!/usr/bin/env bash
# The classic script deploy that shipyard is measured against: what a team writes by hand.
#   baseline.sh DEPLOY_DIR GIT_DIR REF [RESTART_COMMAND]
# Fresh directory per deploy, a new venv with pip, migrate, collectstatic, symlink, restart.
set -euo pipefail
deploy_dir=$1 git_dir=$2 ref=$3 restart=${4:-}
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
if [ -n "$restart" ]; then eval "$restart"; fi
