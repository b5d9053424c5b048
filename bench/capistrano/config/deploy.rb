# A standard Capistrano recipe for a Django app, the way its guides write it: the git strategy
# (a mirror of the repo on the server, `git archive` of the revision into a new release), a
# virtualenv per release with `pip install -r`, `migrate` and `collectstatic`, the shared
# `.env` and `media/` linked in, `keep_releases`. No app server restart (as shipyard's rows
# with `-o no-restart`). bench/run.py sets the CAP_* variables.
lock "~> 3.17"

set :application, "mysite"
set :repo_url, ENV.fetch("CAP_REPO")
set :branch, "main"
set :deploy_to, ENV.fetch("CAP_DEPLOY_TO")
set :keep_releases, ENV.fetch("CAP_KEEP", "5").to_i
set :linked_files, [".env"]
set :linked_dirs, ["media"]
set :format, :airbrussh
set :format_options, log_file: ENV.fetch("CAP_LOG", "log/capistrano.log")  # the bench's temp dir
set :log_level, :warn
set :pty, false
set :default_env, {
  "DATABASE_URL" => ENV.fetch("CAP_DATABASE_URL"),
  "SECRET_KEY" => "bench-capistrano",
  "PIP_DISABLE_PIP_VERSION_CHECK" => "1",
}.merge(ENV.select { |k, _| k.start_with?("PIP_") })

server "127.0.0.1", user: ENV.fetch("CAP_USER"), roles: %w[app db web], ssh_options: {
  port: ENV.fetch("CAP_PORT").to_i,
  keys: [ENV.fetch("CAP_KEY")],
  keys_only: true,
  auth_methods: %w[publickey],
  verify_host_key: :never,
}

namespace :python do
  desc "A virtualenv for the release, its requirements installed with pip"
  task :venv do
    on roles(:app) do
      within release_path do
        execute :python3, "-m", "venv", ".venv"
        execute release_path.join(".venv/bin/pip"), "install", "--quiet", "-r", "requirements.txt"
      end
    end
  end
end

namespace :django do
  desc "migrate, then collectstatic"
  task :build do
    on roles(:app) do
      within release_path do
        execute release_path.join(".venv/bin/python"), "manage.py", "migrate", "--noinput", "-v", "0"
        execute release_path.join(".venv/bin/python"), "manage.py", "collectstatic", "--noinput", "-v", "0"
      end
    end
  end
end

after "deploy:updated", "python:venv"
after "python:venv", "django:build"
