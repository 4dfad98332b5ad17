"""Real event datasets (SHD, N-MNIST) as dense spike frames.

The loaders need ``tonic`` (``pip install 'etprop[datasets]'``), imported only when a loader is
called. The conversion from events to frames, `events_to_frames`, is plain numpy and works on
any structured array laid out like tonic's events, so it is usable (and tested) without tonic.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from etprop.errors import ArgumentError

__all__ = ["SHD_SENSOR", "NMNIST_SENSOR", "events_to_frames", "frames_from_samples", "shd", "nmnist"]

# tonic's sensor sizes, (width, height, polarities).
SHD_SENSOR = (700, 1, 1)
NMNIST_SENSOR = (34, 34, 2)

_INSTALL_HINT = "pip install 'etprop[datasets]' (or: pip install tonic)"


def events_to_frames(events: np.ndarray, sensor_size: Sequence[int], dt: float, n_steps: int | None = None,
                     *, t_unit: float = 1e-3, binary: bool = False, dtype: Any = np.float32) -> np.ndarray:
    """Bin an event stream into dense frames.

    Args:
        events: ``(E,)`` numpy structured array with fields ``t`` and ``x`` and optionally ``y``
            and ``p``, in any order (tonic uses ``(t, x, p)`` for SHD, ``(x, y, t, p)`` for N-MNIST).
            A missing ``y`` or ``p`` counts as 0.
        sensor_size: ``(W, H, P)`` as tonic gives it. With ``P == 1`` the polarity is ignored
            (tonic stores SHD's artificial polarity as 1).
        dt: bin width in ms.
        n_steps: number of frames ``T``; events at ``t >= n_steps * dt`` are dropped. ``None``:
            just enough frames to hold the last event.
        t_unit: ms per unit of ``t``; tonic stores microseconds, hence 1e-3.
        binary: clip the counts at 1 (spike / no spike in the bin).
        dtype: dtype of the result.

    Returns:
        ``(T, W * H * P)`` event counts; channel ``(p * H + y) * W + x``, i.e. tonic's ``ToFrame``
        ``(T, P, H, W)`` frames flattened.
    """
    names = events.dtype.names or ()
    if "t" not in names or "x" not in names:
        raise ArgumentError(f"events need fields 't' and 'x' (a structured array), got fields {names}")
    if len(sensor_size) != 3 or min(sensor_size) < 1:
        raise ArgumentError(f"sensor_size must be (W, H, P) with positive entries, got {tuple(sensor_size)}")
    if not dt > 0:
        raise ArgumentError(f"dt must be > 0 ms, got {dt}")
    W, H, P = (int(s) for s in sensor_size)
    channels = W * H * P

    def field(name, size):
        if name not in names or (name == "p" and size == 1):
            return np.zeros(events.shape, np.int64)
        v = np.asarray(events[name]).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() >= size):
            raise ArgumentError(f"event field {name!r} must lie in [0, {size}), got [{v.min()}, {v.max()}]")
        return v

    x, y, p = field("x", W), field("y", H), field("p", P)
    t = np.asarray(events["t"], np.float64)
    if t.size and t.min() < 0:
        raise ArgumentError(f"event times must be >= 0, got {t.min()}")
    step = np.floor(t * t_unit / dt).astype(np.int64)
    if n_steps is None:
        n_steps = int(step.max()) + 1 if step.size else 0
    elif n_steps < 1:
        raise ArgumentError(f"n_steps must be >= 1, got {n_steps}")
    keep = step < n_steps
    flat = step[keep] * channels + ((p * H + y) * W + x)[keep]
    frames = np.bincount(flat, minlength=n_steps * channels).reshape(n_steps, channels)
    if binary:
        frames = np.minimum(frames, 1)
    return frames.astype(dtype)


def frames_from_samples(samples: Iterable[tuple[np.ndarray, Any]], sensor_size: Sequence[int], dt: float,
                        n_steps: int, *, binary: bool = False, limit: int | None = None,
                        t_unit: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Convert ``(events, label)`` samples (a tonic dataset, or any iterable of pairs) to arrays.

    Returns:
        ``frames`` ``(N, n_steps, W * H * P)`` uint8 counts (saturated at 255, which keeps a whole
        dataset in memory; cast per batch) and ``labels`` ``(N,)`` int32. ``limit`` keeps the first
        ``limit`` samples.
    """
    frames, labels = [], []
    for i, (events, label) in enumerate(samples):
        if limit is not None and i >= limit:
            break
        counts = events_to_frames(events, sensor_size, dt, n_steps, t_unit=t_unit, binary=binary,
                                  dtype=np.int64)
        frames.append(np.minimum(counts, 255).astype(np.uint8))
        labels.append(int(label))
    if not frames:
        raise ArgumentError("no samples to convert")
    return np.stack(frames), np.asarray(labels, np.int32)


def _tonic():
    try:
        import tonic
    except ImportError as err:
        raise ArgumentError(f"the SHD and N-MNIST loaders need tonic: {_INSTALL_HINT}") from err
    return tonic


def _indexed(dataset, limit):
    """Iterate a map-style dataset by index (tonic's datasets are), stopping at ``limit``."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return (dataset[i] for i in range(n))


def shd(root: str, train: bool = True, dt: float = 10.0, n_steps: int = 100, *, binary: bool = False,
        limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spiking Heidelberg Digits (20 classes, 700 channels) as frames; downloads into ``root`` via tonic.

    Returns ``(frames (N, n_steps, 700) uint8, labels (N,) int32)``; the defaults cover the
    recordings' first second in 10 ms bins.
    """
    dataset = _tonic().datasets.SHD(save_to=str(root), train=train)
    return frames_from_samples(_indexed(dataset, limit), SHD_SENSOR, dt, n_steps, binary=binary)


def nmnist(root: str, train: bool = True, dt: float = 10.0, n_steps: int = 30, *, binary: bool = False,
           limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """N-MNIST (10 classes, 34 x 34 x 2 = 2312 channels) as frames; downloads into ``root`` via tonic.

    Returns ``(frames (N, n_steps, 2312) uint8, labels (N,) int32)``; the defaults cover the three
    ~100 ms saccades in 10 ms bins. The full training set is 60000 x 30 x 2312 bytes (~4 GB):
    use ``limit`` or a coarser ``dt`` on small machines.
    """
    dataset = _tonic().datasets.NMNIST(save_to=str(root), train=train)
    return frames_from_samples(_indexed(dataset, limit), NMNIST_SENSOR, dt, n_steps, binary=binary)
