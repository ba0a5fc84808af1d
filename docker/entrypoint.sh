#!/bin/sh
# Entrypoint of the imgq images. The first argument names the role:
#
#   api | predict-worker | train-worker | webhooks-worker | flower   [extra arguments...]
#
# and anything else runs as given (`docker run --rm -it IMAGE bash`, `... IMAGE python -c ...`).
#
# The command lines and their IMGQ_* defaults are those of imgq/local/commands.py, which `make run` and
# the test suite start; tests/test_deploy.py runs this script with IMGQ_ENTRYPOINT_DRY_RUN=1 and
# compares, so change both together. `exec` keeps the server as PID 1: the SIGTERM of
# `docker stop` or the kubelet reaches Celery itself (warm shutdown: in-flight tasks finish,
# prefetched messages go back to the queue) and gunicorn itself (graceful stop).
set -eu

role="${1:-api}"
if [ "$#" -gt 0 ]; then
    shift
fi

run() {
    if [ -n "${IMGQ_ENTRYPOINT_DRY_RUN:-}" ]; then
        printf '%s\n' "$@"
        exit 0
    fi
    # The Docker HEALTHCHECK (imgq-healthcheck) reads the role from this file.
    printf '%s\n' "$role" >/tmp/imgq-role || true
    exec "$@"
}

# celery_worker QUEUE POOL CONCURRENCY PREFETCH_MULTIPLIER [extra arguments...]
celery_worker() {
    queue="$1"
    pool="$2"
    concurrency="$3"
    prefetch="$4"
    shift 4
    run python3 -m celery -A "workers.${queue}_worker" worker \
        --queues "$queue" --pool "$pool" --concurrency "$concurrency" \
        --prefetch-multiplier "$prefetch" --hostname "$queue@%h" \
        --without-gossip --without-mingle --loglevel "${IMGQ_LOG_LEVEL:-INFO}" "$@"
}

case "$role" in
    api)
        # gunicorn's worker processes share Prometheus metrics through files in this folder;
        # files left by an earlier run of the container would be counted again, so start empty.
        export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
        if [ -z "${IMGQ_ENTRYPOINT_DRY_RUN:-}" ]; then
            mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
            find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
        fi
        run python3 -m gunicorn api.wsgi:app --config python:api.gunicorn_conf --bind "${IMGQ_API_BIND:-0.0.0.0:8000}" \
            --worker-class gthread --workers "${IMGQ_API_WORKERS:-2}" \
            --threads "${IMGQ_API_THREADS:-16}" --graceful-timeout 20 "$@"
        ;;
    predict-worker)
        # Prefetch is two batches (one running, one filling). Messages a worker has prefetched
        # are no longer in the Redis list that KEDA measures: see deploy/base/predict-worker.yaml.
        celery_worker predict threads 1 "$((2 * ${IMGQ_MAX_BATCH_SIZE:-32}))" "$@"
        ;;
    train-worker)
        # prefork with one child: the parent never imports TensorFlow, the child does after fork.
        celery_worker train prefork 1 1 "$@"
        ;;
    webhooks-worker)
        celery_worker webhooks threads 8 1 "$@"
        ;;
    flower)
        run python3 -m celery -A workers.webhooks_worker flower --port=5555 "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
