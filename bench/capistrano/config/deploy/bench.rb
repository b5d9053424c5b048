# The stage bench/run.py deploys to (everything is in config/deploy.rb).
