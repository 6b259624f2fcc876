#!/usr/bin/env bash
# Runs one Apache Kafka node (KRaft, broker and controller in one process) in
# the foreground, storing in DIR; formats DIR's storage the first time.
#
#   scripts/kafka-broker.sh DIR PORT [CONTROLLER_PORT]
#
# PORT takes clients (PLAINTEXT://127.0.0.1:PORT); CONTROLLER_PORT (default
# PORT+1) the node's own quorum traffic. The broker's jars come from
# $KAFKA_LIBS (default $CACHE_DIR/tools/kafka/libs, installed by
# `scripts/ensure-deps.sh kafka`). It prints "Kafka Server started" once it
# serves. KAFKA_HEAP_OPTS (default -Xms256m -Xmx1g) sizes its heap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: kafka-broker.sh DIR PORT [CONTROLLER_PORT]}
port=${2:?usage: kafka-broker.sh DIR PORT [CONTROLLER_PORT]}
cport=${3:-$((port + 1))}
libs=${KAFKA_LIBS:-${CACHE_DIR:-$HOME/.cache/llm-billing}/tools/kafka/libs}
[ -d "$libs" ] || { echo "no Kafka jars in $libs: run scripts/ensure-deps.sh kafka" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

{
    cat "$here/kafka/server.properties"
    echo "controller.quorum.voters=1@127.0.0.1:$cport"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
    echo "log.dirs=$dir/data"
} > "$dir/server.properties"

java_opts=(-cp "$libs/*" "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties")
if [ ! -f "$dir/data/meta.properties" ]; then
    # A cluster id is 16 random bytes in unpadded URL-safe base64, as
    # `kafka-storage.sh random-uuid` prints it; like Kafka's own, never one
    # that starts with '-', which the tool's argument parser takes for an option.
    cluster_id=-
    while [ "${cluster_id:0:1}" = - ]; do
        cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    java "${java_opts[@]}" kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$dir/server.properties" >/dev/null
fi
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "${java_opts[@]}" kafka.Kafka "$dir/server.properties"
