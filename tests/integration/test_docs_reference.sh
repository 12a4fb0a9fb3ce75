#!/bin/sh
# The config reference is generated from the option tables: fail when the
# checked-in docs/config-reference.md is stale (regenerate with `make docs`).
set -u
out=$(mktemp)
"$AM_BIN" components --markdown > "$out"
if diff -u "$AM_SOURCE_DIR/docs/config-reference.md" "$out" > "$out.diff"; then
    echo "ok   docs/config-reference.md matches the option tables"
    echo "1 passed, 0 failed"
    rm -f "$out" "$out.diff"
    exit 0
fi
head -40 "$out.diff"
echo "FAIL docs/config-reference.md is stale: run make docs"
echo "0 passed, 1 failed"
rm -f "$out" "$out.diff"
exit 1
