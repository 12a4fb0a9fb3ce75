#!/bin/sh
# tests/bench/run.sh BUILD_DIR - agentmeter's benchmark suite (issue 8),
# called by `make bench` after a Release build of BUILD_DIR.
#
# Runs every scenario (ingest, full at 4 and 16 connections, limit, latency,
# memory, start) against BUILD_DIR/agentmeter with BUILD_DIR/tests/loadgen/*
# and writes BENCHMARKS.md at the top of the source tree.  The work is done
# by bench.py next to this file (JSON, processes and Markdown are clearer in
# Python); Debian's /usr/bin/python3 is used, as in the integration tests.
#
# Environment knobs (defaults are what BENCHMARKS.md reports):
#   BENCH_SPANS=500000   spans per throughput run
#   BENCH_RUNS=3         runs per scenario
#   BENCH_OUT=FILE       where to write the report (default: BENCHMARKS.md)
#   BENCH_PROFILE=auto   perf profile of the full chain when a target is missed
#                        (auto | always | never)
set -eu
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: tests/bench/run.sh BUILD_DIR" >&2
    exit 2
fi
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
exec "$PY" "$(dirname "$0")/bench.py" "$1"
