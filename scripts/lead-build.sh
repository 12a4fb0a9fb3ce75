#!/bin/sh
# Configure a build with only the listed components on (for integrating work
# in progress): scripts/lead-build.sh BUILD_DIR comp1 comp2 ...
set -eu
dir="$1"; shift
opts=""
for d in receivers/* processors/* exporters/*; do
    [ -d "$d" ] || continue
    name=$(basename "$d"); kind=$(dirname "$d"); kind=${kind%s}
    flag=$(echo "AM_WITH_${kind}_${name}" | tr a-z A-Z)
    on=OFF
    for c in "$@"; do [ "$c" = "$name" ] && on=ON; done
    opts="$opts -D$flag=$on"
done
# shellcheck disable=SC2086
cmake -S . -B "$dir" ${LEAD_CMAKE_FLAGS:--DCMAKE_BUILD_TYPE=Debug -DAM_SANITIZE=ON} $opts >/dev/null
cmake --build "$dir" -j2 2>&1 | grep -E "error|warning" || true
