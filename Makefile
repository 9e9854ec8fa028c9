# The README's two commands. Each does its own set-up on a fresh Debian machine.
#   make demo   SmolLM2-135M-Instruct with a TurboQuant KV cache: memory saved and quality vs f16
#   make test   build and run the whole test suite (CI runs exactly this)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps models build test demo clean fuzz-long bench

all: build

deps:
	@scripts/install_deps.sh

models:
	@scripts/fetch_models.sh
	@scripts/fetch_data.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

test: deps models build
	scripts/run_tests.sh $(BUILD)

demo: deps models build
	scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)

# Long fuzz runs (ASan + UBSan, clang, build dir build-fuzz): FUZZ_RUNS executions per target.
FUZZ_RUNS ?= 10000000
fuzz-long:
	scripts/fuzz.sh --runs $(FUZZ_RUNS) build-fuzz
