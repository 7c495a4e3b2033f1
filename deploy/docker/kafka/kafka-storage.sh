#!/usr/bin/env bash
# kafka.tools.StorageTool: random-uuid, format, info.
exec /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool "$@"
