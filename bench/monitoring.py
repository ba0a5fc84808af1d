"""What monitoring costs: service CPU per predict job with the prediction window on and off.

Prediction workers record every prediction's top-1 label and confidence in its version's
window (``imgq.monitoring``), inside the Lua script that stores the image's result. This
benchmark measures what that recording costs the service, in one run:

1. starts Redis once, in a temporary folder;
2. runs ``2 x --rounds`` rounds, alternating monitoring on (the default
   ``IMGQ_MONITOR_WINDOW``) and off (``IMGQ_MONITOR_WINDOW=0``) in ABBA order (on, off, off,
   on, on, off, ...), so that a linear drift of the machine (thermal, page cache, Redis'
   growing keyspace and AOF) falls equally on both. Each round starts the API (gunicorn) and
   one prediction worker with that setting, warms them up with ``--warmup`` unmeasured jobs,
   then sends the same fixed workload: ``--jobs`` predict jobs of one image (scikit-image's
   chelsea photo as a JPEG, base64 in a JSON body) from ``--threads`` client threads, each
   waiting for its job with ``GET /jobs/<id>?wait=30``; then stops the API and worker;
3. around each workload, reads user + system CPU time from ``/proc/<pid>/stat`` (clock
   ticks) of the API's gunicorn processes, the prediction worker and its children, and
   redis-server, counting children that ended in the meantime through their parents'
   ``cutime``/``cstime`` (the client threads of this process are not counted), and from
   ``/proc/stat`` how many cores the rest of the machine used meanwhile (what disturbs it);
4. prints service CPU per job in milliseconds for each configuration and component, the
   difference on - off per job and whether it is within the spec's 0.3 ms, how far that
   difference can be trusted (a 95 % interval over the rounds: whether the run resolves
   the budget at all), the time Redis spent in the recording commands themselves
   (``INFO commandstats``), and the Redis memory of the monitoring keys at the end
   (``MEMORY USAGE`` of the window list), and of a window filled to its full size.

Run: ``.venv/bin/python bench/monitoring.py`` (``--jobs 300 --threads 4 --rounds 2`` by
default: four rounds; more rounds or jobs lower the noise). Not a test: it takes minutes, its
figures depend on the machine, and it asserts nothing about time; compare the figures of one
run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq import redis_keys
from imgq.api_keys import create_key_file
from imgq.jobs.predict_images import ImageResult, PredictImages
from imgq.jobs.store import new_job_id
from imgq.local.supervisor import (
    REPO,
    Service,
    api_answers,
    free_port,
    launch_api,
    launch_redis,
    launch_worker,
    process_tree,
    redis_answers,
    stop_all,
    wait_until,
    worker_answers,
)
from imgq.queueing import WorkerKind, make_celery
from imgq.settings import Settings
from ml.registry import model_id

BUDGET_MS = 0.3
"""What the spec allows monitoring to add to the service's CPU per job."""
COMPONENTS = ("api (gunicorn)", "prediction worker", "redis-server")
TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_WINDOW = int(Settings.model_fields["monitor_window"].default)
"""``IMGQ_MONITOR_WINDOW`` when unset: what "monitoring on" runs with."""


def sample_jpeg() -> bytes:
    """scikit-image's chelsea photo (451x300) as a JPEG, as a client would send it."""
    from skimage import data

    load: Callable[[], np.ndarray] = data.chelsea  # scikit-image's loaders are untyped
    buffer = io.BytesIO()
    Image.fromarray(load()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process and its descendants, from ``/proc``.

    Live processes count their own ``utime + stime`` (every thread's, ended ones included);
    descendants that ended and were reaped count through their parent's ``cutime + cstime``.
    A process that ends between two readings without being reaped is lost, which none of the
    measured services does during a workload.
    """
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")" that closes comm, field 0 is state; utime..cstime are 11..14.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / TICKS


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


@dataclass
class Round:
    """What one round measured: CPU seconds per component over ``jobs`` jobs."""

    monitoring: bool
    jobs: int
    seconds: float
    cpu_s: dict[str, float]
    redis_usec: dict[str, int]
    window_length: int
    others_cores: float
    """Cores that processes outside this benchmark used meanwhile: what disturbs it."""

    def ms_per_job(self, component: str | None = None) -> float:
        """CPU per job in ms, of one component or (``None``) of the whole service."""
        total = self.cpu_s[component] if component else sum(self.cpu_s.values())
        return total / self.jobs * 1000

    def redis_us_per_job(self, *commands: str) -> float:
        """Time Redis spent executing ``commands`` (``INFO commandstats``), in µs per job."""
        return sum(self.redis_usec.get(command, 0) for command in commands) / self.jobs


@dataclass
class Workload:
    """A fixed number of jobs shared by client threads, and what went wrong."""

    remaining: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: list[str] = field(default_factory=list)

    def take(self) -> bool:
        """Claim one job to send; False once all are claimed."""
        with self.lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True


def client(
    base: str, api_key: str, body: dict[str, object], work: Workload, stop: threading.Event
) -> None:
    """Submit a job, wait for it to end, repeat until the workload is used up."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    while not stop.is_set() and work.take():
        try:
            response = session.post(f"{base}/jobs/predict", json=body, timeout=60)
            if response.status_code != 202:
                work.failed.append(f"{response.status_code} {response.text[:200]}")
                continue
            document = response.json()
            while document["status"] in ("queued", "running"):
                document = session.get(
                    f"{base}/jobs/{document['id']}", params={"wait": 30}, timeout=40
                ).json()
            if document["status"] != "succeeded":
                work.failed.append(str(document.get("error")))
        except requests.RequestException as exc:
            work.failed.append(repr(exc))


def send_jobs(base: str, api_key: str, image: bytes, jobs: int, threads: int) -> None:
    """Send ``jobs`` one-image predict jobs from ``threads`` clients; returns when all end."""
    body: dict[str, object] = {"images": [base64.b64encode(image).decode()]}
    work, stop = Workload(jobs), threading.Event()
    clients = [
        threading.Thread(target=client, args=(base, api_key, body, work, stop), daemon=True)
        for _ in range(threads)
    ]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    finally:
        stop.set()  # on Ctrl-C: no client starts another job
    if work.failed:
        raise RuntimeError(f"{len(work.failed)} of {jobs} jobs failed, e.g. {work.failed[0]}")


def window_keys(client: redis.Redis) -> list[bytes]:
    """Every version's monitoring window in this Redis."""
    pattern = redis_keys.monitor_window("*", 0).replace(":0:", ":*:")
    return sorted(client.scan_iter(match=pattern, count=1000))


def window_length(client: redis.Redis) -> int:
    """Predictions in all windows together."""
    return sum(int(client.llen(key)) for key in window_keys(client))


def command_usec(client: redis.Redis) -> dict[str, int]:
    """Microseconds Redis has spent in each command so far (commands that scripts call
    count under their own names as well as under the script's EVALSHA)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["usec"]) for name, entry in stats.items()}


def started(
    services: list[Service], service: Service, ready: Callable[[Service], bool], timeout_s: float
) -> Service:
    """Add a just-launched ``service`` to ``services`` (which are stopped whatever happens,
    Ctrl-C during start-up included), then wait until it is ``ready``."""
    services.append(service)
    wait_until(lambda: ready(service), timeout_s, service.name)
    return service


def run_round(
    settings: Settings,
    workdir: Path,
    image: bytes,
    args: argparse.Namespace,
    *,
    redis_service: Service,
    api_key: str,
    number: int,
) -> Round:
    """Start API and worker with ``settings``, warm up, measure the workload, stop them."""
    monitoring = settings.monitor_window > 0
    redis_client = redis.Redis.from_url(settings.redis_url)
    services: list[Service] = []
    try:
        bind = f"127.0.0.1:{free_port()}"
        api = started(services, launch_api(settings, workdir, bind), api_answers, 60)
        control = make_celery(settings).control
        worker = started(
            services,
            launch_worker(settings, workdir, WorkerKind.PREDICT, f"bench-monitor-{number}"),
            lambda service: worker_answers(control, service),
            180,  # the model loads and warms up before the worker answers
        )
        pids = dict(
            zip(
                COMPONENTS,
                (api.process.pid, worker.process.pid, redis_service.process.pid),
                strict=True,
            )
        )
        send_jobs(api.url, api_key, image, args.warmup, args.threads)
        time.sleep(args.settle)
        usec_before = command_usec(redis_client)
        before = {name: tree_cpu_s(pid) for name, pid in pids.items()}
        ours_before, busy_before = tree_cpu_s(os.getpid()), machine_busy_s()
        began = time.monotonic()
        send_jobs(api.url, api_key, image, args.jobs, args.threads)
        elapsed = time.monotonic() - began
        time.sleep(args.settle)  # late acks and log writes of the last jobs
        cpu_s = {name: tree_cpu_s(pid) - before[name] for name, pid in pids.items()}
        ours = tree_cpu_s(os.getpid()) - ours_before  # services and clients: our children
        others = (machine_busy_s() - busy_before - ours) / (elapsed + args.settle)
        usec = {
            name: value - usec_before.get(name, 0)
            for name, value in command_usec(redis_client).items()
        }
    finally:
        stop_all(services)  # worker and API together: nothing is in flight any more
    length = window_length(redis_client)
    measured = Round(monitoring, args.jobs, elapsed, cpu_s, usec, length, max(others, 0.0))
    print(
        f"  round {number + 1}: monitoring {'on ' if monitoring else 'off'} "
        f"{args.jobs / elapsed:6.1f} jobs/s, "
        + ", ".join(f"{name} {measured.ms_per_job(name):6.2f}" for name in COMPONENTS)
        + f", total {measured.ms_per_job():6.2f} ms/job; window holds {length}; "
        f"other processes used {measured.others_cores:.2f} cores",
        flush=True,
    )
    return measured


def pooled_ms(rounds: list[Round], component: str | None = None) -> float:
    """CPU per job over several rounds together (total CPU / total jobs), in ms."""
    jobs = sum(r.jobs for r in rounds)
    return sum(r.ms_per_job(component) * r.jobs for r in rounds) / jobs


def student_t_975(freedom: float) -> float:
    """Two-sided 95 % quantile of Student's t (rounded down to a tabled degree of freedom,
    so never narrower than the exact one); few rounds make it wide, as they should."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
    table |= {10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
    tabled = [df for df in table if df <= freedom]
    return table[max(tabled)] if tabled else table[1]


def print_summary(rounds: list[Round]) -> None:
    """Per-component CPU per job on and off, the difference, the verdict and the noise."""
    on = [r for r in rounds if r.monitoring]
    off = [r for r in rounds if not r.monitoring]
    print(f"\nservice CPU per job (ms), {len(on)} round(s) each, user + system from /proc:")
    print(f"  {'component':<20} {'on':>8} {'off':>8} {'on - off':>9}")
    for name in (*COMPONENTS, None):
        print(
            f"  {name or 'service total':<20} {pooled_ms(on, name):8.3f} "
            f"{pooled_ms(off, name):8.3f} {pooled_ms(on, name) - pooled_ms(off, name):+9.3f}"
        )
    difference = pooled_ms(on) - pooled_ms(off)
    print(
        f"\nmonitoring costs {difference:+.3f} ms of service CPU per job "
        f"({difference / pooled_ms(off) * 100:+.1f} % of {pooled_ms(off):.2f} ms): "
        f"{'within' if difference <= BUDGET_MS else 'OVER'} the {BUDGET_MS} ms budget"
    )
    if min(len(on), len(off)) < 2:
        print("noise: one round per configuration; --rounds 2 or more estimates it")
    else:
        # Rounds are the samples: Welch's interval of the difference of the two means.
        squares = [
            statistics.variance([r.ms_per_job() for r in same]) / len(same) for same in (on, off)
        ]
        error = math.sqrt(sum(squares))
        freedom = (
            sum(squares) ** 2
            / sum(
                square**2 / (len(same) - 1) for square, same in zip(squares, (on, off), strict=True)
            )
            if error > 0
            else math.inf
        )
        half = student_t_975(freedom) * error
        low, high = difference - half, difference + half
        if high <= BUDGET_MS:
            verdict = "within the budget even at its top"
        elif low > BUDGET_MS:
            verdict = "over the budget even at its bottom"
        else:
            verdict = (
                "which straddles the budget: this run does not resolve it (a quieter machine, "
                "or more --rounds, narrows it)"
            )
        spread = max(
            max(r.ms_per_job() for r in same) - min(r.ms_per_job() for r in same)
            for same in (on, off)
        )
        print(
            f"noise: same-configuration rounds differ by up to {spread:.3f} ms/job; "
            f"on - off is {difference:+.3f} ± {half:.3f} ms (95 % interval over rounds, "
            f"{freedom:.1f} degrees of freedom: {low:+.3f} to {high:+.3f}), {verdict}"
        )
    script_on, script_off = (
        sum(r.redis_us_per_job("evalsha") for r in same) / len(same) for same in (on, off)
    )
    recording = sum(r.redis_us_per_job("lpush", "ltrim", "sadd") for r in on) / len(on)
    print(
        f"inside Redis (INFO commandstats): scripts (EVALSHA) {script_on:.1f} µs/job on, "
        f"{script_off:.1f} off ({script_on - script_off:+.1f}); of it LPUSH + LTRIM + SADD "
        f"{recording:.1f} µs/job on"
    )
    ratio = sum(r.jobs / r.seconds for r in on) / len(on)
    ratio /= sum(r.jobs / r.seconds for r in off) / len(off)
    print(f"throughput on / off: {ratio:.3f}")


def print_memory(client: redis.Redis, settings: Settings) -> None:
    """Redis memory of the monitoring keys, and of the window once it holds its full size."""
    keys = window_keys(client)
    print("\nRedis memory of the monitoring keys at the end:")
    if not keys:
        print("  no window (no round had monitoring on)")
        return
    entries: list[bytes | str] = []
    for key in keys:
        length = int(client.llen(key))
        used = int(client.memory_usage(key, samples=0) or 0)
        print(
            f"  {key.decode()}: {length} predictions, {used / 1024:.1f} KiB "
            f"({used / max(length, 1):.1f} B per prediction)"
        )
        entries.extend(client.lrange(key, 0, -1))
    members = int(client.memory_usage(redis_keys.MONITORED_VERSIONS, samples=0) or 0)
    print(f"  {redis_keys.MONITORED_VERSIONS}: {members} B")
    # The window is capped at monitor_window entries: fill a scratch list with that many
    # entries like this run's (fresh job ids) to show the most one version's window takes.
    full, scratch = settings.monitor_window, f"imgq:bench:monitor:{new_job_id()}"
    pipe = client.pipeline(transaction=False)
    for start in range(0, full, 1000):
        batch = []
        for i in range(start, min(full, start + 1000)):
            row = json.loads(entries[i % len(entries)])  # [job id, index, label, ...]
            row[0] = new_job_id()
            batch.append(json.dumps(row))
        pipe.rpush(scratch, *batch)
    pipe.execute()
    used = int(client.memory_usage(scratch, samples=0) or 0)
    client.delete(scratch)
    print(
        f"  a full window (IMGQ_MONITOR_WINDOW={full}) of such entries: "
        f"{used / 2**20:.2f} MiB per model version ({used / full:.1f} B per prediction)"
    )


def store_step_cost(redis_service: Service, settings: Settings, jobs: int, rounds: int) -> None:
    """Print the CPU of the one step that differs, storing results, with and without the
    window: the only code monitoring adds runs in ``PredictImages.store`` and its Lua script.

    Calls it from this process for ``jobs`` one-image predict jobs per block, in alternating
    blocks, against the bench's Redis, and reads this process's CPU (``time.process_time``:
    the worker's share) and redis-server's (``/proc``: the script's share). Without a model
    in the loop the noise is far below the whole-service rounds'.
    """
    client = redis.Redis.from_url(redis_service.url)
    images = PredictImages(client, settings.job_ttl_s)
    redis_pid = redis_service.process.pid
    model = model_id("bench", "store-step")
    top = [{"label": "tabby", "index": 281, "score": 0.8125}]
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for block in range(2 * rounds):
        monitoring = block % 4 in (0, 3)  # ABBA again
        ids = [new_job_id() for _ in range(jobs)]
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hset(f"imgq:job:{job_id}", mapping={"status": "running", "image_count": "1"})
        pipe.execute()
        results = [ImageResult(job_id, 0, top) for job_id in ids]
        worker, server = time.process_time(), tree_cpu_s(redis_pid)
        for start in range(0, jobs, 32):  # batches as a worker stores them
            images.store(
                "store-step",
                1,
                results[start : start + 32],
                monitor=(model, DEFAULT_WINDOW if monitoring else 0),
            )
        totals[monitoring][0] += time.process_time() - worker
        totals[monitoring][1] += tree_cpu_s(redis_pid) - server
        client.delete(*(f"imgq:job:{job_id}" for job_id in ids))
    count = jobs * rounds
    on = [1000 * value / count for value in totals[True]]
    off = [1000 * value / count for value in totals[False]]
    print(f"\nthe store step alone, {count} jobs each way in {2 * rounds} ABBA blocks:")
    print(f"  {'':22}{'on':>9}{'off':>9}{'on - off':>10}")
    for index, part in enumerate(("worker (this process)", "redis-server")):
        print(f"  {part:22}{on[index]:9.4f}{off[index]:9.4f}{on[index] - off[index]:+10.4f}")
    extra = sum(on) - sum(off)
    verdict = "within" if extra <= 0.3 else "OVER"
    print(f"  recording adds {extra:+.4f} ms of CPU per job: {verdict} the 0.3 ms budget")
    client.delete(redis_keys.monitor_window(model, 1))
    client.srem(redis_keys.MONITORED_VERSIONS, f"{model}:1")


def main() -> int:
    """Run the rounds and print what monitoring costs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="measured jobs per round")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured jobs per round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="pairs of rounds (on + off), in ABBA order"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds of quiet before each CPU reading"
    )
    parser.add_argument(
        "--store-jobs", type=int, default=2000, help="jobs per block of the store-step part"
    )
    parser.add_argument(
        "--store-rounds", type=int, default=4, help="pairs of blocks of the store-step part"
    )
    args = parser.parse_args()

    image = sample_jpeg()
    workdir = Path(tempfile.mkdtemp(prefix="imgq-bench-monitoring-"))
    api_key = create_key_file(workdir / "api-keys.json") or ""
    base = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        model_store=workdir / "models",
        weights_dir=REPO / "var" / "weights",
        api_threads=args.threads + 8,
        metrics_port=0,
        ready_file=workdir / "ready",
        log_level="WARNING",
        api_keys_file=workdir / "api-keys.json",
    )
    configurations = {
        True: base.model_copy(update={"monitor_window": DEFAULT_WINDOW}),
        False: base.model_copy(update={"monitor_window": 0}),
    }
    order = [
        monitoring
        for pair in range(args.rounds)
        for monitoring in ((True, False) if pair % 2 == 0 else (False, True))
    ]
    print(
        f"{len(order)} rounds ({', '.join('on' if m else 'off' for m in order)}) of "
        f"{args.jobs} jobs of one image ({len(image)} byte JPEG, base64 JSON) from "
        f"{args.threads} client threads, after {args.warmup} warm-up jobs each; "
        f"{os.cpu_count()} CPUs, monitor window {configurations[True].monitor_window}",
        flush=True,
    )
    # SIGTERM (a closed terminal, a CI timeout) stops every process, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    redis_services: list[Service] = []
    rounds: list[Round] = []
    try:
        redis_service = started(
            redis_services,
            launch_redis(base, workdir / "redis", workdir),
            lambda service: redis_answers(service.url),
            20,
        )
        for number, monitoring in enumerate(order):
            rounds.append(
                run_round(
                    configurations[monitoring],
                    workdir,
                    image,
                    args,
                    redis_service=redis_service,
                    api_key=api_key,
                    number=number,
                )
            )
        print_summary(rounds)
        store_step_cost(redis_service, base, args.store_jobs, args.store_rounds)
        print_memory(redis.Redis.from_url(base.redis_url), configurations[True])
    except BaseException:
        print(f"\nfailed; service logs are in {workdir}", file=sys.stderr)
        raise
    finally:
        stop_all(redis_services)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every process is stopped by then
        sys.exit(130)
