#!/bin/bash
# What apache/kafka's script of this name runs (docker-compose.yaml's healthcheck calls it): the API versions of
# the brokers at --bootstrap-server, exit code 0 when they answer.
exec java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties -cp "/opt/kafka/libs/*" \
    kafka.admin.BrokerApiVersionsCommand "$@"
