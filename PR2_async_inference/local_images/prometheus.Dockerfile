# Debian's Prometheus for machines that reach no container registry: runs docker-compose.yaml's prometheus service
# as prom/prometheus does (the binary as entry point, the compose file's command as its flags, a non-root user
# that owns /prometheus). container_images.py builds it on a Debian root file system with the package installed.
ARG BASE
FROM ${BASE}
RUN mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
