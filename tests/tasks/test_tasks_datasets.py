"""etprop.tasks.datasets: event-to-frame binning on generated tonic-like events (tonic not needed)."""

import sys

import numpy as np
import pytest

from etprop.errors import ArgumentError
from etprop.tasks import datasets
from etprop.tasks.datasets import NMNIST_SENSOR, SHD_SENSOR, events_to_frames, frames_from_samples

SHD_DTYPE = np.dtype([("t", int), ("x", int), ("p", int)])                 # tonic's SHD layout
NMNIST_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])  # tonic's N-MNIST layout


def shd_events(rng, n=500, t_max_us=1_000_000):
    ev = np.zeros(n, SHD_DTYPE)
    ev["t"] = np.sort(rng.integers(0, t_max_us, n))
    ev["x"] = rng.integers(0, 700, n)
    ev["p"] = 1                                                              # tonic's artificial polarity
    return ev


def nmnist_events(rng, n=800, t_max_us=300_000):
    ev = np.zeros(n, NMNIST_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, 34, n), rng.integers(0, 34, n)
    ev["t"] = np.sort(rng.integers(0, t_max_us, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


def test_shd_binning_matches_a_loop():
    ev = shd_events(np.random.default_rng(0))
    frames = events_to_frames(ev, SHD_SENSOR, dt=10.0, n_steps=100)
    expected = np.zeros((100, 700))
    for t, x, _ in ev:
        expected[int(t // 10_000), x] += 1                                  # microseconds -> 10 ms bins
    assert frames.shape == (100, 700) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, expected)


def test_nmnist_channels_are_tonic_frames_flattened():
    ev = nmnist_events(np.random.default_rng(1))
    frames = events_to_frames(ev, NMNIST_SENSOR, dt=5.0, n_steps=60)
    expected = np.zeros((60, 2, 34, 34))                                    # tonic ToFrame: (T, P, H, W)
    for x, y, t, p in ev:
        expected[int(t // 5000), p, y, x] += 1
    np.testing.assert_array_equal(frames, expected.reshape(60, -1))


def test_truncation_auto_length_binary_and_dtype():
    ev = np.zeros(4, SHD_DTYPE)
    ev["t"], ev["x"] = [0, 1500, 1600, 9999], [3, 3, 3, 5]
    full = events_to_frames(ev, (8, 1, 1), dt=1.0)                          # just long enough: 10 bins
    assert full.shape == (10, 8) and full[1, 3] == 2 and full[9, 5] == 1
    cut = events_to_frames(ev, (8, 1, 1), dt=1.0, n_steps=2, binary=True, dtype=np.uint8)
    assert cut.dtype == np.uint8 and cut.sum() == 2 and cut[1, 3] == 1     # t >= 2 ms dropped, clipped
    ms = events_to_frames(ev, (8, 1, 1), dt=1000.0, t_unit=1.0)             # t already in ms
    assert ms.shape == (10, 8) and ms.sum() == 4


@pytest.mark.parametrize("events, sensor, needle", [
    (np.zeros(3, [("x", int), ("p", int)]), SHD_SENSOR, "'t'"),
    (np.zeros(3), SHD_SENSOR, "'t'"),
    (np.array([(0, 700, 1)], SHD_DTYPE), SHD_SENSOR, "'x'"),
    (np.array([(-5, 1, 1)], SHD_DTYPE), SHD_SENSOR, "times"),
    (np.array([(1, 1, 0, 2)], NMNIST_DTYPE), NMNIST_SENSOR, "'p'"),
    (np.array([(0, 1, 1)], SHD_DTYPE), (700, 1), "sensor_size"),
])
def test_bad_events_raise(events, sensor, needle):
    with pytest.raises(ArgumentError, match=needle):
        events_to_frames(events, sensor, dt=1.0)


def test_frames_from_samples_stacks_and_saturates():
    rng = np.random.default_rng(2)
    samples = [(shd_events(rng, n=50), 3), (shd_events(rng, n=50), 7), (shd_events(rng, n=50), 1)]
    burst = np.zeros(300, SHD_DTYPE)                                         # 300 events in one bin
    samples.append((burst, 0))
    frames, labels = frames_from_samples(samples, SHD_SENSOR, dt=50.0, n_steps=20)
    assert frames.shape == (4, 20, 700) and frames.dtype == np.uint8
    np.testing.assert_array_equal(labels, [3, 7, 1, 0])
    assert frames[3, 0, 0] == 255
    first, _ = frames_from_samples(samples, SHD_SENSOR, dt=50.0, n_steps=20, limit=2)
    assert first.shape[0] == 2


def test_loaders_without_tonic_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tonic", None)                         # import tonic -> ImportError
    for loader in (datasets.shd, datasets.nmnist):
        with pytest.raises(ArgumentError, match=r"etprop\[datasets\]"):
            loader("/nonexistent")
