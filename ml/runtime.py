"""How TensorFlow spreads one prediction worker's forward passes over the CPU cores.

TensorFlow's default on a CPU splits every op across all cores (intra-op threads), so each of
the few hundred ops of a forward pass ends on a barrier that waits for its slowest thread. On a
machine where anything else also runs (the API, Redis, decoding), one preempted thread stalls
the whole pass: on this project's 2-core machine, a process taking a third of a core cut
Lite0's batch-32 throughput from 114 to 84 images/s. Splitting each batch into ``lanes`` parts
that run side by side, each single-threaded, leaves one barrier per batch instead: 125 images/s
alone and 103 beside the same neighbour. GPUs keep TensorFlow's default (one lane).
"""

from __future__ import annotations

import functools
import os

MAX_AUTO_LANES = 8
"""Most lanes chosen automatically; past that, a batch of 32 splits into slivers."""


@functools.cache
def inference_lanes(requested: int) -> int:
    """Configure TensorFlow's threads for ``requested`` lanes (0: one per core); return lanes.

    Must run before TensorFlow executes its first op (threading is fixed then); later calls
    return the first answer.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return 1
    lanes = requested or min(len(os.sched_getaffinity(0)), MAX_AUTO_LANES)
    if lanes > 1:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(lanes)
    return lanes
