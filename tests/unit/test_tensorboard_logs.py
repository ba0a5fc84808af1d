"""``ml.tensorboard_logs``: what a tiny ``fit`` logs, and the zip clients download of it."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ml.tensorboard_logs import tensorboard_callback, zip_logs


def test_a_fit_logs_epoch_scalars_and_the_zip_names_no_host(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4), dtype=np.float32), rng.integers(0, 2, 16)
    callback = tensorboard_callback(tmp_path / "logs" / "head")
    model.fit(x, y, validation_data=(x, y), epochs=2, callbacks=[callback], verbose=0)

    with zipfile.ZipFile(io.BytesIO(zip_logs(tmp_path / "logs"))) as archive:
        names = archive.namelist()
    assert {str(Path(name).parent) for name in names} == {"head/train", "head/validation"}
    assert all(".tfevents." in name and name.endswith(".v2") for name in names)
    assert not any(socket.gethostname() in name for name in names)


def test_zipping_a_folder_without_event_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "head").mkdir()
    with pytest.raises(ValueError, match="no TensorBoard event file"):
        zip_logs(tmp_path)
