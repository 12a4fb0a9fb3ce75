# agentmeter - the two commands a newcomer needs:
#   make run    install what is missing, build, run on the embedded default config
#   make test   install what is missing, build, run every test
# and a few more: make build | sanitize | fuzz | bench | docs | clean
BUILD     ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
BENCH_BUILD ?= build-release
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 20

.PHONY: all build run test sanitize fuzz bench docs deps test-deps clean

all: build

deps:
	@sh scripts/deps.sh build

test-deps:
	@sh scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/agentmeter

test: test-deps build
	cd $(BUILD) && ctest --output-on-failure -j 1

# ASan + UBSan build of the unit tests (CI runs this after `make test`).
sanitize: test-deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DAM_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -L unit

# libFuzzer targets, each run for FUZZ_SECONDS on its seed corpus.
fuzz: test-deps
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DAM_FUZZ=ON -DAM_SANITIZE=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)
	@sh scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: test-deps
	@cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BENCH_BUILD) -j $(JOBS)
	@if [ -x tests/bench/run.sh ]; then tests/bench/run.sh $(BENCH_BUILD); \
	 else echo "make bench: the benchmark suite (issue 8) is not written yet" >&2; exit 1; fi

# The config reference is generated from the option tables.
docs: build
	./$(BUILD)/agentmeter components --markdown > docs/config-reference.md

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(BENCH_BUILD)
