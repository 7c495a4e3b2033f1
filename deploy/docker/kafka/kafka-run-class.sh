#!/usr/bin/env bash
# java with the Kafka jars on the classpath, with the JVM options of Kafka's own bin/kafka-run-class.sh
# (same variables, same defaults). Usage: kafka-run-class.sh CLASS [ARGS...]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CLASS [ARGS...]" >&2; exit 1; }
main_class="$1"
shift
heap="${KAFKA_HEAP_OPTS:--Xmx256M}"
performance="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"
log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.yaml}"
# shellcheck disable=SC2086  # the *_OPTS variables are lists of options, split on purpose
exec java $heap $performance $log4j ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' "$main_class" "$@"
