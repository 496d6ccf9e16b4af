#!/bin/sh
# One-shot step of compose.yaml's `cluster` profile: make the six redis-node-* containers one
# Redis Cluster (three primaries, a replica each), unless they already are one.
set -eu
NODES="redis-node-1 redis-node-2 redis-node-3 redis-node-4 redis-node-5 redis-node-6"
if redis-cli -h redis-node-1 cluster info | grep -q '^cluster_state:ok'; then
    echo "cluster-create: the cluster exists already"
    exit 0
fi
addresses=""
for node in $NODES; do
    until redis-cli -h "$node" ping >/dev/null 2>&1; do sleep 0.5; done
    # redis-cli --cluster create takes addresses; the nodes announce their hostnames.
    addresses="$addresses $(getent hosts "$node" | cut -d' ' -f1):6379"
done
# shellcheck disable=SC2086 # one argument per address
redis-cli --cluster create $addresses --cluster-replicas 1 --cluster-yes
