"""The recipes of the stand-in base images (``tests.containers.podman`` builds them).

No registry is reachable here, so ``python:3.11-slim`` and ``redis:7.4.2-alpine`` are made from
``bookworm-min`` (debootstrap's minbase) with Debian's packages, close enough to the originals
for imgq's images and compose file to run unchanged.
"""

BASE_IMAGE = "localhost/bookworm-min:latest"
"""debootstrap's minbase of bookworm, imported (``Podman.ensure_base``)."""

PYTHON_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
        python3 python3-venv ca-certificates >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
COPY host-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    LANG=C.UTF-8
CMD ["python3"]
"""
# As the official image: uid and gid 999 (deploy/base/redis.yaml runs as 999; Debian's package
# keeps a redis user that exists), and its entrypoint's one rule that matters here: a
# redis-server started without a config file gets --protected-mode no (compose's is).
REDIS_ENTRYPOINT = """\
#!/bin/sh
set -e
if [ "$1" = redis-server ] && { [ "$#" -eq 1 ] || [ "${2#-}" != "$2" ]; }; then
    set -- "$@" --protected-mode no
fi
exec "$@"
"""
REDIS_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN groupadd --system --gid 999 redis \\
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis \\
        --shell /usr/sbin/nologin redis \\
    && apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
        redis-server >/dev/null \\
    && rm -rf /var/lib/apt/lists/* && install -d -o redis -g redis /data
COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER 999:999
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
"""
