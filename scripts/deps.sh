#!/bin/sh
# Install what agentmeter needs on Debian 12, only what is missing.
#   scripts/deps.sh build   compilers and -dev libraries
#   scripts/deps.sh test    + real peers for integration tests (grpcio,
#                           node + the OpenTelemetry JS SDK, prometheus, kcat,
#                           openssl, clang for fuzzing, valgrind)
set -eu
what="${1:-build}"

build_pkgs="gcc make cmake pkg-config protobuf-c-compiler libprotobuf-c-dev libnghttp2-dev
 libuv1-dev librdkafka-dev libssl-dev libzstd-dev libyaml-dev zlib1g-dev libsnappy-dev
 libcurl4-openssl-dev libcmocka-dev libhttp-parser-dev libjson-c-dev"
test_pkgs="python3 python3-grpcio python3-grpc-tools python3-yaml openssl curl prometheus kcat
 nghttp2-client clang libclang-rt-14-dev valgrind"

pkgs="$build_pkgs"
if [ "$what" = "test" ] || [ "$what" = "bench" ]; then
    pkgs="$pkgs $test_pkgs"
fi

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# Node.js: any install will do (Debian's nodejs + npm, or one already here).
if [ "$what" != "build" ] && ! command -v node >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi

if [ -n "$missing" ]; then
    echo "deps: installing:$missing"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

if [ "$what" != "build" ]; then
    js="$(dirname "$0")/../tests/integration/js"
    if [ -f "$js/package-lock.json" ] && [ ! -d "$js/node_modules/@opentelemetry/sdk-trace-base" ]; then
        echo "deps: npm ci in tests/integration/js"
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
