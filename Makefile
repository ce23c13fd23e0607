# pushworker — see README.md. Every target works on a fresh clone.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 8080

.PHONY: run test e2e lint fmt dev-token-google dev-token-clerk

## run: serve locally with the embedded development identity (no setup)
run:
	PORT=$(PORT) $(CARGO) run --bin pushworker -- serve --dev

## test: every test (unit, integration against real servers on loopback)
test:
	$(CARGO) test --all-targets --no-fail-fast

## e2e: only the admin page's browser tests (needs: apt-get install chromium chromium-driver);
## screenshots land in target/admin-screenshots/
e2e:
	$(CARGO) test --test admin_e2e

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
