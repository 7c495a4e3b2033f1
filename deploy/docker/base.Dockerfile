# The base of every project image (services, pipeline, Kafka): a Debian bookworm with CPython 3.11, the
# build machine's extra CA certificates, the user `fraud` (uid 10001) and FRAUD_HOME. Only what rarely
# changes: every image is rebuilt from scratch when this one changes. scripts/images.sh
# builds it as fraud-tfx-base:<tag> on top of ROOT_IMAGE:
#   - python:3.11-slim-bookworm when a public registry is reachable (the default below);
#   - fraud-tfx-rootfs:bookworm-<hash> when none is: Debian from its package archive (deploy/docker/rootfs.sh).
# Both are bookworm, so every `apt-get install` of the images gets the same Debian packages; `python3`
# is CPython 3.11 in both (/usr/local/bin in the slim image, /usr/bin from Debian).
ARG ROOT_IMAGE=python:3.11-slim-bookworm
FROM ${ROOT_IMAGE}

# deploy/docker/certs/*.crt: CA certificates of the build machine's TLS-intercepting egress (copied there
# by scripts/images.sh from /usr/local/share/ca-certificates; none on an ordinary machine). pip, Maven and
# Python's ssl then trust the same roots inside the build as outside it. pip ships its own CA list, hence
# PIP_CERT pointing at the system bundle.
COPY deploy/docker/certs/ /usr/local/share/ca-certificates/fraud/
RUN update-ca-certificates > /dev/null \
 && python3 -c "import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version" \
 && groupadd --system --gid 10001 fraud \
 && useradd --system --uid 10001 --gid fraud --home-dir /var/lib/fraud --no-create-home --shell /usr/sbin/nologin fraud \
 && mkdir -p /var/lib/fraud /var/cache/fraud \
 && chown fraud:fraud /var/lib/fraud /var/cache/fraud
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRAUD_HOME=/var/lib/fraud \
    FRAUD_CACHE=/var/cache/fraud
