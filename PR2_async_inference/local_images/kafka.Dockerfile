# Apache Kafka 3.9.1 from its Maven Central jars on Debian's Java 17, for machines that reach no container registry:
# it runs docker-compose.yaml's kafka service as apache/kafka does (KAFKA_* variables -> server.properties, KRaft
# storage formatted once, one node in the foreground, uid 1000, the healthcheck's script). container_images.py
# builds it with the jars and the scripts beside this file as the context.
ARG BASE
FROM ${BASE}
COPY libs/ /opt/kafka/libs/
COPY kafka-entrypoint.sh kafka-broker-api-versions.sh /opt/kafka/bin/
COPY log4j.properties /opt/kafka/config/
RUN useradd --no-create-home --home-dir /opt/kafka --uid 1000 appuser \
    && chmod 0755 /opt/kafka/bin/*.sh \
    && mkdir -p /var/lib/kafka/data \
    && chown -R appuser /var/lib/kafka /opt/kafka/config
USER appuser
ENTRYPOINT ["/opt/kafka/bin/kafka-entrypoint.sh"]
