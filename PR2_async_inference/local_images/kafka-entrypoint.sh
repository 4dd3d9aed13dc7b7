#!/bin/bash
# Entry point of the local Apache Kafka image. As in apache/kafka, every KAFKA_* variable becomes a line of
# server.properties: the prefix dropped, lower case, "_" -> ".", "__" -> "_", "___" -> "-"
# (KAFKA_LOG_DIRS -> log.dirs); the JVM's own variables are not settings.
set -euo pipefail
config=/opt/kafka/config/server.properties
: > "$config"
for var in $(compgen -e); do
    case "$var" in
        KAFKA_HEAP_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_OPTS | KAFKA_LOG4J_OPTS | KAFKA_VERSION) continue ;;
        KAFKA_*) ;;
        *) continue ;;
    esac
    key=$(printf '%s' "${var#KAFKA_}" | tr '[:upper:]' '[:lower:]' \
        | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
    printf '%s=%s\n' "$key" "${!var}" >> "$config"
done
# A small heap and one GC thread by default, as PR2's apache_kafka.py runs a node on the project's 2-core machines.
read -r -a heap <<< "${KAFKA_HEAP_OPTS:--Xmx256m -Xms256m}"
read -r -a perf <<< "${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC}"
read -r -a extra <<< "${KAFKA_OPTS:-}"
java=(java "${heap[@]}" "${perf[@]}" "${extra[@]}" -Djava.awt.headless=true
      -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties -cp "/opt/kafka/libs/*")
# The cluster id apache/kafka uses when CLUSTER_ID is unset; a formatted log dir keeps its own.
"${java[@]}" kafka.tools.StorageTool format --ignore-formatted -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$config"
exec "${java[@]}" kafka.Kafka "$config"
