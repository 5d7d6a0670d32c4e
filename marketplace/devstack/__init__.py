"""The embedded default `make run` starts: anvil, a deploy, the gateway under gunicorn.
Never imported by what production runs (a house rule test checks it)."""
