"""What the reference scripts share: reading the four raw MNIST IDX files, and timing a phase."""

import statistics
import time
from pathlib import Path

import numpy as np

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_all(data_dir: Path) -> list:
    """Train images, train labels, test images, test labels (uint8)."""
    return [read_idx(data_dir / name) for name in FILES]


def timed(function, repeat: int) -> dict:
    """One warm-up call, then `repeat` timed calls: their median, min and max in seconds."""
    function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
