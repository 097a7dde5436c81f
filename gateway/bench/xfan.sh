#!/bin/bash
# Cross-node fan-out: two `chorus` nodes on 127.0.0.1 with load.toml, the
# subscribers on node B and the publisher on node A, so every message crosses
# the cluster once. Prints chorus-load's result and each node's CPU ticks.
#   gateway/bench/xfan.sh CHORUS_BIN CHORUS_LOAD_BIN [fanout args...]
# e.g. gateway/bench/xfan.sh target/release/chorus target/release/chorus-load --subs 1000 --rate 0 --secs 5
set -e
bin=$1; load=$2; shift 2
cfg="$(dirname "$0")/load.toml"
export CHORUS_CLUSTER_SECRET=xfan-cluster-secret-0123456789
export CHORUS_TOKEN_SECRET=chorus-load-token-secret-0123456789
"$bin" --config "$cfg" --listen 127.0.0.1:4310 --node xa --gossip 127.0.0.1:7610 --seeds 127.0.0.1:7611 >/tmp/xfan-a.log 2>&1 & pa=$!
"$bin" --config "$cfg" --listen 127.0.0.1:4311 --node xb --gossip 127.0.0.1:7611 --seeds 127.0.0.1:7610 >/tmp/xfan-b.log 2>&1 & pb=$!
trap 'kill $pa $pb 2>/dev/null; wait $pa $pb 2>/dev/null' EXIT
ready() { curl -sf "http://127.0.0.1:$1/readyz" >/dev/null; }
for _ in $(seq 1 100); do
  if ready 4310 && ready 4311; then break; fi
  sleep 0.1
done
"$load" --url ws://127.0.0.1:4311/socket/websocket --pid $pb fanout \
  --publish-url ws://127.0.0.1:4310/socket/websocket "$@"
for p in $pa $pb; do echo "node pid $p: $(awk '{print $14+$15}' /proc/$p/stat) CPU ticks"; done
