# pushworker — see README.md. Every target works on a fresh clone.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 8080
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: run test test-prereqs e2e lint fmt openapi dev-token-google dev-token-clerk

# Tests that use a Python tool find it here (scripts/test-prereqs.sh venv).
export PUSHWORKER_TEST_VENV ?= $(CURDIR)/.venv

## run: serve locally with the embedded development identity (no setup)
run:
	PORT=$(PORT) $(CARGO) run --bin pushworker -- serve --dev

## test: first what the tests need (test-prereqs), then every test (unit,
## integration against real servers on loopback, the browser tests), then the
## runtime-image check on the debug binary the tests built (it links the same
## libraries and glibc symbols as the release one; `make image-check` checks
## the release binary, at the cost of a release build)
test: test-prereqs
	$(CARGO) test --all-targets --no-fail-fast
	scripts/check-runtime-image.sh $(TARGET_DIR)/debug/pushworker

## test-prereqs: Chromium and ChromeDriver, PostgreSQL (started if stopped),
## gcloud's Pub/Sub emulator, the Python tools of requirements-test.txt in
## .venv/; installs what is missing when root, else says what to run
test-prereqs:
	scripts/test-prereqs.sh

## e2e: only the admin page's browser tests (installs Chromium first if
## missing); screenshots land in target/admin-screenshots/
e2e:
	scripts/test-prereqs.sh browser
	$(CARGO) test --test admin_e2e

## lint: formatting and clippy, as CI runs them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## openapi: write the OpenAPI 3.1 document (`pushworker openapi`, what
## GET /openapi.json serves) to docs/openapi.json; a test fails until the
## committed file matches the code
openapi:
	$(CARGO) run -q --bin pushworker -- openapi > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

# --- Fuzzing (cargo-fuzz, libFuzzer; not part of `make test`) ----------------
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= push_envelope unwrapped_headers token_routing
# Address sanitizer (cargo-fuzz's default), debug assertions on; 16 codegen
# units keep the build of the whole dependency tree bearable on 2 cores.
FUZZ_FLAGS ?= --codegen-units 16

.PHONY: fuzz

## fuzz: run each fuzz target (fuzz/) for FUZZ_SECONDS (default 60), one after
## the other, from the seeds in fuzz/seeds/ (new inputs go to the git-ignored
## fuzz/corpus/); fails if any target finds a crash (input in fuzz/artifacts/).
## Installs cargo-fuzz if missing; stable Rust, nightly flags via RUSTC_BOOTSTRAP=1
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_FLAGS) $$t $(CURDIR)/fuzz/corpus/$$t $(CURDIR)/fuzz/seeds/$$t \
	    -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    || { echo "fuzz: $$t FAILED (crash input in fuzz/artifacts/$$t/)"; status=1; }; \
	done; exit $$status

## dev-token-google / dev-token-clerk: mint a development token
dev-token-google:
	@$(CARGO) run -q --bin pushworker -- dev-token google
dev-token-clerk:
	@$(CARGO) run -q --bin pushworker -- dev-token clerk --azp http://localhost:$(PORT)

.PHONY: docker image-check

## docker: build the Cloud Run image (needs a container engine; this machine has
## none, so `make image-check` stands in for it here)
docker:
	docker build -t pushworker .

## image-check: release build, then check the binary against the runtime image
## (libraries distroless/cc provides; starts with an empty env; SIGTERM exits 0);
## `make test` runs the same check on its debug binary
image-check:
	$(CARGO) build --release --bin pushworker
	scripts/check-runtime-image.sh $(TARGET_DIR)/release/pushworker

# --- The local Pub/Sub loop (the real emulator that ships with gcloud) -------
EMULATOR_PORT ?= 8085
PUBSUB_PROJECT ?= pushworker-local
TOPIC ?= work
DEAD_LETTER ?= work-dead-letter
BRIDGE_SUB ?= work-bridge
EMULATOR_DIR := .pushworker-dev/emulator
EMU := http://127.0.0.1:$(EMULATOR_PORT)/v1/projects/$(PUBSUB_PROJECT)

.PHONY: emulator emulator-stop publish replay run-loop

## emulator: start the Pub/Sub emulator and create the topic, the dead-letter
## topic with its subscription, and the pull subscription the bridge reads
emulator:
	@command -v gcloud >/dev/null || { echo "gcloud is missing: install the Google Cloud CLI and 'gcloud components install pubsub-emulator beta' (or apt-get install google-cloud-cli-pubsub-emulator)"; exit 1; }
	@mkdir -p $(EMULATOR_DIR)/data
	@if curl -sf http://127.0.0.1:$(EMULATOR_PORT)/ >/dev/null; then echo "emulator already running on $(EMULATOR_PORT)"; else \
	  setsid gcloud beta emulators pubsub start --host-port=127.0.0.1:$(EMULATOR_PORT) --project=$(PUBSUB_PROJECT) \
	    --data-dir=$(EMULATOR_DIR)/data > $(EMULATOR_DIR)/emulator.log 2>&1 & echo $$! > $(EMULATOR_DIR)/pid; \
	  for i in $$(seq 1 120); do curl -sf http://127.0.0.1:$(EMULATOR_PORT)/ >/dev/null && break; sleep 0.5; done; \
	  curl -sf http://127.0.0.1:$(EMULATOR_PORT)/ >/dev/null || { echo "emulator did not start; see $(EMULATOR_DIR)/emulator.log"; exit 1; }; fi
	@curl -s -o /dev/null -X PUT $(EMU)/topics/$(TOPIC)
	@curl -s -o /dev/null -X PUT $(EMU)/topics/$(DEAD_LETTER)
	@curl -s -o /dev/null -X PUT $(EMU)/subscriptions/$(DEAD_LETTER)-sub -H 'content-type: application/json' \
	  -d '{"topic":"projects/$(PUBSUB_PROJECT)/topics/$(DEAD_LETTER)"}'
	@curl -s -o /dev/null -X PUT $(EMU)/subscriptions/$(BRIDGE_SUB) -H 'content-type: application/json' \
	  -d '{"topic":"projects/$(PUBSUB_PROJECT)/topics/$(TOPIC)","ackDeadlineSeconds":60,"deadLetterPolicy":{"deadLetterTopic":"projects/$(PUBSUB_PROJECT)/topics/$(DEAD_LETTER)","maxDeliveryAttempts":5}}'
	@echo "emulator on 127.0.0.1:$(EMULATOR_PORT): topic $(TOPIC), dead-letter topic $(DEAD_LETTER) (+ $(DEAD_LETTER)-sub), bridge subscription $(BRIDGE_SUB)"
	@echo "next: make run-loop  (worker with the dead-letter topic), make publish JOB=echo DATA='{\"message\":\"hi\"}', make replay SUB=$(BRIDGE_SUB)"

emulator-stop:
	@if [ -f $(EMULATOR_DIR)/pid ]; then kill -- -$$(cat $(EMULATOR_DIR)/pid) 2>/dev/null || true; rm -f $(EMULATOR_DIR)/pid; fi
	@pkill -f "[c]loud-pubsub-emulator.*--port=$(EMULATOR_PORT)" 2>/dev/null || true

## run-loop: make run, dead-lettering to the emulator's dead-letter topic
run-loop:
	PUBSUB_EMULATOR_HOST=127.0.0.1:$(EMULATOR_PORT) DEAD_LETTER_TOPIC=projects/$(PUBSUB_PROJECT)/topics/$(DEAD_LETTER) \
	  PORT=$(PORT) $(CARGO) run --bin pushworker -- serve --dev

## publish: publish one message to the emulator's topic (JOB=echo DATA='{"message":"hi"}')
JOB ?= echo
DATA ?= {"message":"hello from make publish"}
publish:
	@curl -sf -X POST $(EMU)/topics/$(TOPIC):publish -H 'content-type: application/json' \
	  -d '{"messages":[{"data":"'"$$(printf '%s' '$(DATA)' | base64 -w0)"'","attributes":{"job":"$(JOB)"}}]}' && echo

## replay: fixtures/ into the local server; FILE=path for one file; SUB=name to
## bridge the emulator subscription into the local server
replay:
ifdef SUB
	PUBSUB_EMULATOR_HOST=127.0.0.1:$(EMULATOR_PORT) $(CARGO) run -q --bin pushworker -- replay \
	  --subscription projects/$(PUBSUB_PROJECT)/subscriptions/$(SUB) --target http://127.0.0.1:$(PORT)
else
	$(CARGO) run -q --bin pushworker -- replay --target http://127.0.0.1:$(PORT) $(or $(FILE),fixtures/)
endif

# --- Performance ---------------------------------------------------------------
BENCH_ARGS ?=

.PHONY: bench

## bench: release build, then wrk against the real binary and a bare axum route
## side by side (scenarios in benches/load/scenarios.rs); writes bench/results.json.
## Options: make bench BENCH_ARGS='--duration 20 --connections 64'
bench:
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
	$(CARGO) bench --bench load -- $(BENCH_ARGS)
