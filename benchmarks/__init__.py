"""Serving benchmarks, run by hand (never by CI or pytest).

Each script measures one table in one run, prints it, writes
`benchmarks/results/<name>.json` and `.md`, and replaces its own section of
`docs/benchmarks.md`. Run them from the repository root:

    .venv/bin/python -m benchmarks.latency
    .venv/bin/python -m benchmarks.throughput
    .venv/bin/python -m benchmarks.bot_burst
    .venv/bin/python -m benchmarks.bot_memory
    .venv/bin/python -m benchmarks.agreement
    .venv/bin/python -m benchmarks.decode

`--quick` shrinks every script to a smoke test whose numbers mean nothing and
which writes nothing into docs/benchmarks.md.
"""
