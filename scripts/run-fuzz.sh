#!/bin/sh
# Run every built fuzz target for a bounded time on its seed corpus.
# usage: scripts/run-fuzz.sh BUILD_DIR SECONDS
set -eu
build="$1"
seconds="$2"
src="$(cd "$(dirname "$0")/.." && pwd)"
found=0
for target in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$target" ] || continue
    found=1
    name="$(basename "$target")"
    corpus="$src/tests/fuzz/corpus/${name#fuzz_}"
    work="$(mktemp -d)"
    [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/ 2>/dev/null || true
    echo "fuzz: $name for ${seconds}s"
    mkdir -p "$build/fuzz-artifacts"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$target" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 \
        -artifact_prefix="$build/fuzz-artifacts/$name-" "$work" >"$work.log" 2>&1 ||
        { tail -50 "$work.log"; exit 1; }
    tail -1 "$work.log"
    rm -rf "$work" "$work.log"
done
[ "$found" -eq 1 ] || echo "fuzz: no targets built"
