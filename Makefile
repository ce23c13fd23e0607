# pushworker — see README.md. Every target works on a fresh clone.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 8080

.PHONY: run test lint fmt dev-token-google dev-token-clerk

## run: serve locally with the embedded development identity (no setup)
run:
	PORT=$(PORT) $(CARGO) run --bin pushworker -- serve --dev

## test: every test (unit, integration against real servers on loopback)
test:
	$(CARGO) test --all-targets --no-fail-fast

## lint: formatting and clippy, as CI runs them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

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
## (libraries distroless/cc provides; starts with an empty env; SIGTERM exits 0)
image-check:
	$(CARGO) build --release --bin pushworker
	scripts/check-runtime-image.sh target/release/pushworker
