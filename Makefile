# Chorus: the one front door. Every target here is what CI runs or what the README shows.
CARGO ?= cargo

.PHONY: help run test sim bench fmt lint check-core ci

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

run: ## Build and start one node on 127.0.0.1:4000 (not available yet: see README, Status)
	@echo "make run: the chorus server binary is not built yet (gateway issue #5); see README.md, Status." >&2
	@exit 1

test: ## Build and run every test
	$(CARGO) test --workspace --exclude chorus-sim
	# The simulator sweeps (every scenario over 100+ seeds) run optimised.
	$(CARGO) test --release -p chorus-sim
	# Prove the checkers can fail: a deliberately broken merge must be caught.
	$(CARGO) test --release -p chorus-sim --features broken-merge --test broken_merge

sim: ## Long simulator sweep: every scenario over 10,000 seeds (about an hour on 2 cores)
	$(CARGO) run --release -p chorus-sim -- sweep --seeds 10000

bench: ## Benchmarks; record results in BENCHMARKS.md with the command, date and machine
	$(CARGO) bench -p chorus-engine --bench presence -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p chorus-engine --bench memory
	$(CARGO) bench -p chorus-engine --bench cluster

fmt: ## Format everything
	$(CARGO) fmt --all

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-core: ## Fail if tokio or quinn are reachable from the sans-IO engine core
	@deps=$$($(CARGO) tree -p chorus-engine --no-default-features -e normal --prefix none | grep -E '^(tokio|quinn)[ -]' || true); \
	if [ -n "$$deps" ]; then echo "check-core: the engine core depends on:"; echo "$$deps"; exit 1; fi; \
	echo "check-core: engine core is free of tokio and quinn"

ci: lint check-core test ## What CI runs
