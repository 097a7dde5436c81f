#!/usr/bin/env bash
# Runs schemathesis (every check, every phase including the stateful one) against
# gateway/openapi.json and a live `chorus` node on 127.0.0.1: the HTTP API and its
# OpenAPI document must agree exactly. `make test` runs this after installing
# schemathesis in target/venv (`make schemathesis`).
#
# Environment (all optional):
#   CHORUS_BIN        the chorus binary (default: target/debug/chorus)
#   ST                the schemathesis CLI (default: target/venv/bin/st)
#   ST_MAX_EXAMPLES   test cases per operation and phase (default 200)
#   ST_SEED           a fixed seed, to replay a run (default: random, printed)
#   Extra arguments are passed to `st run` (e.g. --include-path /api/rooms).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
bin=${CHORUS_BIN:-$target/debug/chorus}
st=${ST:-$target/venv/bin/st}
examples=${ST_MAX_EXAMPLES:-200}
seed=${ST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}

for f in "$bin" "$st"; do
    [ -x "$f" ] || { echo "schemathesis: $f is missing (make test builds and installs it)" >&2; exit 2; }
done

work=$(mktemp -d)
pid=
stop() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

key=st-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
log=$work/chorus.log
: >"$log"
# The built-in config (rooms and history enabled), dev mode off, the API on, and
# the system's choice of ports for HTTP and gossip.
CHORUS_API_KEY=$key \
CHORUS_TOKEN_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n') \
RUST_LOG=${RUST_LOG:-warn,chorus=info} \
    "$bin" --listen 127.0.0.1:0 --gossip 127.0.0.1:0 --dev-mode false --node schemathesis \
    --log-format json >"$log" 2>&1 &
pid=$!

# chorus logs `serving ws://ADDR/socket/websocket` once it is bound (ends with the process).
addr=$(timeout 60 tail -n +1 -f --pid="$pid" "$log" \
    | grep -m1 -o 'serving ws://[0-9.:]*' | sed 's|serving ws://||' || true)
if [ -z "$addr" ]; then
    echo "schemathesis: chorus did not start:" >&2
    cat "$log" >&2
    exit 1
fi
base=http://$addr

# Wait until the node says it is ready (bounded).
ready=
for _ in $(seq 1 300); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "schemathesis: chorus at $base never became ready:" >&2
    cat "$log" >&2
    exit 1
fi

echo "schemathesis: chorus at $base; seed $seed (replay with ST_SEED=$seed), $examples examples"
# schemathesis keeps its crash cache (for `st replay`) under the working directory.
mkdir -p "$target/schemathesis"
cd "$target/schemathesis"
set +e
SCHEMATHESIS_HOOKS="$root/tests/schemathesis/hooks.py" "$st" run "$root/gateway/openapi.json" \
    --url "$base" \
    -H "Authorization: Bearer $key" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 10 \
    --output-sanitize false \
    "$@"
rc=$?
set -e
if ! kill -0 "$pid" 2>/dev/null; then
    echo "schemathesis: chorus died during the run:" >&2
    tail -n 50 "$log" >&2
    rc=1
fi
exit "$rc"
