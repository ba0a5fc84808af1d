#!/bin/sh
# Docker HEALTHCHECK of the imgq images: checks the role that imgq-entrypoint recorded.
# Kubernetes ignores HEALTHCHECK; deploy/ declares the same checks as liveness and readiness
# probes.
set -eu

role="$(cat /tmp/imgq-role 2>/dev/null || true)"

get() {
    exec python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"
}

# A worker answers `inspect ping` to its own node name: --hostname QUEUE@%h, where Celery's %h
# is the host name that `uname -n` prints.
ping_worker() {
    exec python3 -m celery -A "workers.$1_worker" inspect ping \
        --destination "$1@$(uname -n)" --timeout 10
}

case "$role" in
    api)
        bind="${IMGQ_API_BIND:-0.0.0.0:8000}"
        get "http://127.0.0.1:${bind##*:}/healthz"
        ;;
    predict-worker)
        # Healthy only once the model is loaded and warm (the worker creates the file then).
        test -f "${IMGQ_READY_FILE:-/tmp/imgq-ready}" || exit 1
        ping_worker predict
        ;;
    train-worker)
        ping_worker train
        ;;
    webhooks-worker)
        ping_worker webhooks
        ;;
    flower)
        get "http://127.0.0.1:5555/healthcheck"
        ;;
    *)
        # A one-off command (bash, python -c ...): nothing long-running to check.
        exit 0
        ;;
esac
