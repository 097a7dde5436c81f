# Chorus: the one front door. Every target here is what CI runs or what the README shows.
CARGO ?= cargo

.PHONY: help run cluster test test-fuzz-replay chromium schemathesis schemathesis-venv sim soak bench bench-load bench-ceiling bench-hostile fuzz fmt lint check-core ci

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

run: ## Build and start one node on 127.0.0.1:4000 (dev mode: demo chat page at /)
	$(CARGO) run --release -p chorus-gateway --bin chorus -- --listen 127.0.0.1:4000 --dev-mode

cluster: ## Start three nodes (HTTP 4000-4002, gossip 7400-7402) with a dev secret; Ctrl-C stops them
	$(CARGO) build --release -p chorus-gateway --bin chorus
	@export CHORUS_CLUSTER_SECRET="$${CHORUS_CLUSTER_SECRET:-chorus-dev-cluster-secret}"; \
	export CHORUS_TOKEN_SECRET="$${CHORUS_TOKEN_SECRET:-chorus-dev-token-secret}"; \
	bin="$${CARGO_TARGET_DIR:-target}/release/chorus"; \
	$$bin --node n1 --listen 127.0.0.1:4000 --gossip 127.0.0.1:7400 --seeds 127.0.0.1:7401,127.0.0.1:7402 & p1=$$!; \
	$$bin --node n2 --listen 127.0.0.1:4001 --gossip 127.0.0.1:7401 --seeds 127.0.0.1:7400,127.0.0.1:7402 & p2=$$!; \
	$$bin --node n3 --listen 127.0.0.1:4002 --gossip 127.0.0.1:7402 --seeds 127.0.0.1:7400,127.0.0.1:7401 & p3=$$!; \
	trap 'kill -TERM $$p1 $$p2 $$p3 2>/dev/null; wait $$p1 $$p2 $$p3' INT TERM; \
	wait $$p1 $$p2 $$p3

test: ## Build and run every test
	# This also builds target/debug/chorus (for the gateway's integration tests),
	# which chorus-tests' partition test and 60 s chaos soak run.
	$(CARGO) test --workspace --exclude chorus-sim
	# The simulator sweeps (every scenario over 100+ seeds) run optimised.
	$(CARGO) test --release -p chorus-sim
	# Prove the checkers can fail: a deliberately broken merge must be caught.
	$(CARGO) test --release -p chorus-sim --features broken-merge --test broken_merge
	# ... and a peer boundary that trusts claimed senders and non-object metas.
	$(CARGO) test --release -p chorus-sim --features trusting-peer --test trusting_peer
	# Every committed fuzz input (fuzz/corpus, fuzz/regressions) replayed on stable.
	@$(MAKE) --no-print-directory test-fuzz-replay
	# The real phoenix npm client (pinned in tests/js/package-lock.json) against a real chorus,
	# and the demo page in headless chromium (playwright-core; screenshot: target/demo-chat.png).
	$(CARGO) build -p chorus-gateway --bin chorus
	# The HTTP API against its own OpenAPI document (schemathesis, every check and phase).
	@$(MAKE) --no-print-directory schemathesis
	@$(MAKE) --no-print-directory chromium
	cd tests/js && npm ci --no-audit --no-fund
	cd tests/js && CHORUS_BIN="$(abspath $(or $(CARGO_TARGET_DIR),target))/debug/chorus" \
		CHROMIUM="$$(command -v chromium)" node --test --test-concurrency=1

test-fuzz-replay: ## Replay every committed fuzz input (corpus and regressions) on stable, no libFuzzer
	CARGO_TARGET_DIR="$(abspath $(or $(CARGO_TARGET_DIR),target))" $(CARGO) test --manifest-path fuzz/Cargo.toml --locked

chromium: ## Install Debian's chromium (for the browser test) if it is missing
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
		echo "make test: the browser test needs chromium; install it (apt-get install chromium) or run as root"; exit 1; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "make test: the browser test needs chromium and there is no apt-get; install chromium yourself"; exit 1; fi; \
	echo "installing chromium with apt-get"; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# schemathesis, pinned, in a virtualenv under target/.
SCHEMATHESIS_VERSION ?= 4.32.5
VENV ?= $(or $(CARGO_TARGET_DIR),target)/venv

schemathesis: schemathesis-venv ## The HTTP API against gateway/openapi.json: schemathesis on a live chorus (tests/schemathesis/run.sh)
	$(CARGO) build -p chorus-gateway --bin chorus
	CHORUS_BIN="$(abspath $(or $(CARGO_TARGET_DIR),target))/debug/chorus" ST="$(abspath $(VENV))/bin/st" \
		tests/schemathesis/run.sh

schemathesis-venv: ## Install the pinned schemathesis in target/venv if it is not there
	@st="$(VENV)/bin/st"; \
	if [ -x "$$st" ] && [ "$$("$$st" --version 2>/dev/null)" = "st, version $(SCHEMATHESIS_VERSION)" ]; then exit 0; fi; \
	if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
			echo "make test: schemathesis needs python3 with venv; install python3-venv or run as root"; exit 1; fi; \
		if ! command -v apt-get >/dev/null; then \
			echo "make test: schemathesis needs python3 with venv and there is no apt-get; install it yourself"; exit 1; fi; \
		echo "installing python3-venv with apt-get"; \
		$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv || exit 1; \
	fi; \
	echo "installing schemathesis $(SCHEMATHESIS_VERSION) in $(VENV)"; \
	python3 -m venv "$(VENV)" && \
	"$(VENV)/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$(SCHEMATHESIS_VERSION)"

sim: ## Long simulator sweep: every scenario over 10,000 seeds (about an hour on 2 cores)
	$(CARGO) run --release -p chorus-sim -- sweep --seeds 10000

# Seconds of fault injection in `make soak` (make test runs the soak for 60).
SOAK_SECS ?= 600

soak: ## Chaos soak: 3 chorus processes, 1,000 clients, kill -9/SIGTERM/restart/partition for SOAK_SECS (default 600) s
	$(CARGO) build -p chorus-gateway --bin chorus
	SOAK_SECS=$(SOAK_SECS) $(CARGO) test -p chorus-tests --test soak -- --nocapture

bench: ## Benchmarks; record results in BENCHMARKS.md with the command, date and machine
	$(CARGO) bench -p chorus-engine --bench presence -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p chorus-engine --bench memory
	$(CARGO) bench -p chorus-engine --bench cluster
	$(MAKE) bench-load

# Sizes of the load scenarios; override on the command line or in the environment.
LOAD_IDLE ?= 10000
LOAD_FANOUT_SECS ?= 10
LOAD_PING_SECS ?= 10
LOAD_STORM ?= 1000
LOAD_STORM_BIG ?= 3000
LOAD_BURST ?= 2000
LOAD_HOOK_JOINS ?= 1000

bench-load: ## Load generator (chorus-load) against a fresh release chorus per scenario, on 127.0.0.1 (about 5 min)
	$(CARGO) build --release -p chorus-gateway --bin chorus --bin chorus-load
	@ulimit -n $$(ulimit -Hn); set -e; \
	bin="$${CARGO_TARGET_DIR:-target}/release"; load="$$bin/chorus-load --spawn $$bin/chorus"; \
	set -x; \
	$$load idle --conns $(LOAD_IDLE); \
	$$load fanout --subs 1000 --rate 50 --secs $(LOAD_FANOUT_SECS); \
	$$load fanout --subs 1000 --rate 200 --secs $(LOAD_FANOUT_SECS); \
	$$load fanout --subs 1000 --rate 800 --secs $(LOAD_FANOUT_SECS); \
	$$load fanout --subs 1000 --rate 0 --secs $(LOAD_FANOUT_SECS); \
	$$load fanout --subs 10000 --rate 5 --secs $(LOAD_FANOUT_SECS); \
	$$load ping --conns 10 --interval-ms 10 --secs $(LOAD_PING_SECS); \
	$$load ping --conns 50 --inflight 10 --secs $(LOAD_PING_SECS); \
	$$load storm --users $(LOAD_STORM) --rate 200; \
	$$load storm --users $(LOAD_STORM_BIG) --rate 200 --timeout 120; \
	$$load storm --users $(LOAD_BURST); \
	$$load hooks --joins $(LOAD_HOOK_JOINS) --conns 100 --delay-ms 1; \
	$$load hooks --joins $(LOAD_HOOK_JOINS) --conns 100 --topic-prefix room; \
	$$load recover --clients 1000 --missed 100; \
	$$load recover --clients 1000 --missed 100 --restart; \
	$$load fanout --subs 1000 --rate 0 --secs $(LOAD_FANOUT_SECS) --topic recover:fanout

# The ceiling (a minimal Phoenix server, not part of Chorus) and its runtime threads.
CEILING_DIR ?= ../shared/ceiling
CEILING_THREADS ?= 1
# How many times each scenario is compared, the two servers alternating: with
# more than one, the medians and the range of each ratio are printed too.
CEILING_ROUNDS ?= 1

bench-ceiling: ## chorus-load --compare: each scenario against the ceiling (CEILING_DIR), then chorus; both figures and the ratio (about 2 min; CEILING_ROUNDS=N: N times, with medians)
	@if [ ! -f "$(CEILING_DIR)/Cargo.toml" ]; then \
		echo "make bench-ceiling: the ceiling is absent: no $(CEILING_DIR)/Cargo.toml (set CEILING_DIR to its checkout)"; exit 1; fi
	$(CARGO) build --release --manifest-path "$(CEILING_DIR)/Cargo.toml" --target-dir "$(CEILING_DIR)/target"
	$(CARGO) build --release -p chorus-gateway --bin chorus --bin chorus-load
	@ulimit -n $$(ulimit -Hn); set -e; uptime; \
	bin="$${CARGO_TARGET_DIR:-target}/release"; \
	load="$$bin/chorus-load --spawn $$bin/chorus --compare $(CEILING_DIR)/target/release/ceiling --ceiling-threads $(CEILING_THREADS) --rounds $(CEILING_ROUNDS)"; \
	set -x; \
	$$load idle --conns $(LOAD_IDLE); \
	$$load fanout --subs 1000 --rate 0 --secs $(LOAD_FANOUT_SECS); \
	$$load fanout --subs 1000 --rate 200 --secs $(LOAD_FANOUT_SECS); \
	$$load ping --conns 50 --inflight 10 --secs $(LOAD_PING_SECS); \
	{ set +x; } 2>/dev/null; uptime

# Seconds each phase of `make bench-hostile` measures.
HOSTILE_SECS ?= 20

bench-hostile: ## A normal client's ping p50/p99 unloaded and under each hostile attack, and the ratio (optimised, one process)
	HOSTILE_SECS=$(HOSTILE_SECS) $(CARGO) test --release -p chorus-gateway --test hostile_client hostile_latency -- --ignored --nocapture

# Seconds per fuzz target, and which targets (default: every one in fuzz/Cargo.toml).
FUZZ_SECS ?= 60
FUZZ_TARGETS ?= $(shell sed -n 's/^name = "\(.*\)"$$/\1/p' fuzz/Cargo.toml | grep -v '^chorus-fuzz$$')
# libFuzzer flags: a hang of 10 s on one input is a failure; leaks are failures.
FUZZ_FLAGS ?= -timeout=10 -detect_leaks=1 -rss_limit_mb=4096

fuzz: ## Run each fuzz target for FUZZ_SECS (default 60) s on nightly; fails on any crash, leak or timeout
	@cargo +nightly --version >/dev/null 2>&1 || { \
		echo "make fuzz: needs the nightly Rust toolchain (libFuzzer's instrumentation is nightly-only)."; \
		echo "           Install it with: rustup toolchain install nightly"; exit 1; }
	@$(CARGO) fuzz --version >/dev/null 2>&1 || { echo "installing cargo-fuzz"; $(CARGO) install cargo-fuzz --locked; }
	cd fuzz && cargo +nightly fuzz build
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$t; \
		regressions=; [ -d regressions/$$t ] && regressions=regressions/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECS) s (log: fuzz/target/fuzz-$$t.log)"; \
		status=0; \
		cargo +nightly fuzz run $$t target/corpus/$$t corpus/$$t $$regressions -- \
			-max_total_time=$(FUZZ_SECS) $(FUZZ_FLAGS) -print_final_stats=1 \
			>target/fuzz-$$t.log 2>&1 || status=$$?; \
		grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' target/fuzz-$$t.log || true; \
		if [ "$$status" != 0 ]; then \
			tail -n 40 target/fuzz-$$t.log; \
			echo "make fuzz: $$t failed (exit $$status); the input is in fuzz/artifacts/$$t/"; exit 1; \
		fi; \
	done; echo "make fuzz: every target ran $(FUZZ_SECS) s with no crash, leak or timeout"

fmt: ## Format everything
	$(CARGO) fmt --all

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# fuzz/ is its own workspace (cargo-fuzz layout): checked the same way.
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all -- --check
	CARGO_TARGET_DIR="$(abspath $(or $(CARGO_TARGET_DIR),target))" \
		$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings

# The container image's name.
.PHONY: docker
IMAGE ?= chorus

docker: ## Build the container image (Dockerfile; needs a container engine: make test checks the Dockerfile without one)
	docker build -t $(IMAGE) .

check-core: ## Fail if tokio or quinn are reachable from the sans-IO engine core
	@deps=$$($(CARGO) tree -p chorus-engine --no-default-features -e normal --prefix none | grep -E '^(tokio|quinn)[ -]' || true); \
	if [ -n "$$deps" ]; then echo "check-core: the engine core depends on:"; echo "$$deps"; exit 1; fi; \
	echo "check-core: engine core is free of tokio and quinn"

ci: lint check-core test ## What CI runs
