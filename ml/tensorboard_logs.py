"""TensorBoard event files of a fine-tune: written while both phases train, kept as one zip.

``training_curves.png`` answers "did it converge"; the event files let an operator go further
without the worker: overlay several versions' runs, zoom into an epoch range, and see the
learning rate that ``ReduceLROnPlateau`` lowered. Keras' own ``TensorBoard`` callback writes
them, set to epoch scalars only (loss, accuracy, learning rate, for training and validation):
no weight histograms, images, graph or profile, so a version's logs stay a few kilobytes.

Each phase is a run of its own, since each is a separate ``fit`` whose epochs count from 0::

    head/train  head/validation  fine_tune/train  fine_tune/validation

The zip holds that tree; unpacked, it is a ``--logdir`` for ``tensorboard``. Event file names
carry the worker's hostname and process id; the zip names them without, since the file is
handed to clients.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import keras

EVENT_FILE_MARK = ".tfevents."
"""What names an event file; TensorBoard reads any file whose name contains it."""


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """A ``TensorBoard`` callback that logs epoch scalars of one ``fit`` into ``log_dir``.

    Args:
        log_dir: the run's folder; Keras adds ``train/`` and ``validation/`` under it.

    Returns:
        The callback, to pass to ``Model.fit``.
    """
    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir),
        histogram_freq=0,
        write_graph=False,
        write_images=False,
        write_steps_per_second=False,
        update_freq="epoch",
        profile_batch=0,
    )


def _public_name(event_file: Path) -> str:
    """``events.out.tfevents.<time>.<host>.<pid>.<n>.v2`` without the host and process id."""
    parts = event_file.name.split(".")
    return ".".join([*parts[:4], "imgq", *parts[-2:]])


def zip_logs(log_dir: Path) -> bytes:
    """Zip the event files under ``log_dir``, by their path below it.

    Args:
        log_dir: the folder given to ``train_classifier`` as ``log_dir``.

    Returns:
        The zip's bytes (a few kilobytes: scalars only).

    Raises:
        ValueError: ``log_dir`` holds no event file, so training logged nothing.
    """
    event_files = sorted(path for path in log_dir.rglob("*") if EVENT_FILE_MARK in path.name)
    if not event_files:
        raise ValueError(f"`log_dir` holds no TensorBoard event file. Received {log_dir}.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in event_files:
            run = path.parent.relative_to(log_dir).as_posix()
            archive.write(path, f"{run}/{_public_name(path)}")
    return buffer.getvalue()
