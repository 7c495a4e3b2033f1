# The Kafka image: Apache Kafka 4.1.1 (KRaft broker/controller, Kafka Connect with the FileStream
# connectors, the CLI tools) from the Maven Central jars the project's embedded broker uses
# (fraud/embedded/pom.xml), on OpenJDK 17. It follows the apache/kafka image's conventions (KAFKA_*
# variables become server.properties, CLUSTER_ID formats the storage, /opt/kafka/bin/*.sh, /opt/kafka/libs),
# so deploy/docker-compose.yml runs with either; this one is built where no public registry is reachable.
#
#   scripts/images.sh     (make images)
#   docker run --rm fraud-tfx-kafka:0.1.0 /opt/kafka/bin/kafka-storage.sh random-uuid
ARG BASE_IMAGE=fraud-tfx-base:0.1.0

# Maven fetches the jars the pom names (dependency plugin pinned: no "latest" lookup). Maven's JRE trusts
# the base's CA certificates (ca-certificates-java imports /etc/ssl/certs on install).
FROM ${BASE_IMAGE} AS jars
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends maven > /dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY fraud/embedded/pom.xml /tmp/kafka/pom.xml
RUN mvn -B -q -f /tmp/kafka/pom.xml -Dmaven.repo.local=/tmp/m2 \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=/opt/kafka/libs \
 && ls /opt/kafka/libs/kafka_2.13-4.1.1.jar /opt/kafka/libs/connect-runtime-4.1.1.jar > /dev/null

FROM ${BASE_IMAGE}
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless > /dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=jars /opt/kafka/libs /opt/kafka/libs
COPY deploy/docker/kafka/log4j2.yaml deploy/docker/kafka/tools-log4j2.yaml /opt/kafka/config/
COPY deploy/docker/kafka/kafka-run-class.sh deploy/docker/kafka/kafka-server-start.sh \
     deploy/docker/kafka/connect-standalone.sh deploy/docker/kafka/kafka-storage.sh \
     deploy/docker/kafka/kafka-topics.sh /opt/kafka/bin/
COPY deploy/docker/kafka/run /etc/kafka/docker/run
RUN mkdir -p /opt/kafka/config/run /var/lib/kafka/data /var/lib/kafka-connect \
 && chown fraud:fraud /opt/kafka/config/run /var/lib/kafka/data /var/lib/kafka-connect \
 && /opt/kafka/bin/kafka-storage.sh random-uuid > /dev/null
# The health check (deploy/docker/healthcheck.py) in a late layer: editing it rebuilds seconds.
COPY deploy/docker/healthcheck.py /usr/local/bin/fraud-healthcheck
ENV PATH=/opt/kafka/bin:$PATH
USER 10001:10001
WORKDIR /var/lib/kafka
# 9092 clients, 9093 controller; Connect's REST API on 8083.
EXPOSE 9092 9093 8083
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=12 CMD ["fraud-healthcheck", "kafka", "127.0.0.1:9092"]
ENTRYPOINT ["/etc/kafka/docker/run"]
