"""PNG figures of a run (matplotlib, headless): learning curves and spiking activity.

matplotlib is an optional dependency (the ``examples`` and ``test`` extras install it);
`available` says whether it can be used, and the training command skips figures with a
notice when it cannot.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["available", "plot_curves", "plot_activity"]


def available() -> bool:
    """Whether matplotlib can be imported."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt
    return plt


def plot_curves(path: str, rows: list[dict], *, title: str, chance: float | None = None,
                metric_name: str = "accuracy") -> None:
    """Loss, accuracy and (when measured) cosine of the online gradient to BPTT, per step.

    ``rows``: the metrics rows (``step``, ``loss``, ``accuracy``, optional ``grad_cos_bptt``).
    """
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    cos = [(r["step"], r["grad_cos_bptt"]) for r in rows
           if r.get("grad_cos_bptt") not in (None, "") and not math.isnan(float(r["grad_cos_bptt"]))]
    n = 3 if cos else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4))
    axes[0].plot(steps, [float(r["loss"]) for r in rows], lw=1)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="update", ylabel="loss", title="loss")
    axes[1].plot(steps, [float(r["accuracy"]) for r in rows], lw=1, label=metric_name)
    if chance is not None:
        axes[1].axhline(chance, color="gray", ls="--", lw=1, label="chance")
    axes[1].set(xlabel="update", ylabel=metric_name, title=metric_name)
    axes[1].legend(loc="lower right", fontsize=8)
    if cos:
        s, c = zip(*cos)
        axes[2].plot(s, [float(v) for v in c], marker="o", ms=3, lw=1, label="all parameters")
        lo = min(float(v) for v in c)
        worst = [float(r["grad_cos_bptt_min"]) for r in rows if r.get("grad_cos_bptt_min") not in (None, "")]
        if len(worst) == len(s):
            axes[2].plot(s, worst, marker="s", ms=3, lw=1, label="worst parameter")
            lo = min(lo, min(worst))
        axes[2].legend(loc="lower right", fontsize=8)
        axes[2].set_ylim(min(0.0, lo), 1.02)
        axes[2].set(xlabel="update", ylabel="cosine", title="online gradient vs BPTT")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_activity(path: str, observed: dict, outputs: np.ndarray, *, title: str, n_raster: int = 60,
                  n_traces: int = 3) -> None:
    """Spike raster and membrane potentials of a few neurons, and the network's outputs.

    ``observed``: ``{"spikes": (T, n), "v": (T, n)}`` for one sample; ``outputs``: ``(T, n_out)``.
    """
    plt = _pyplot()
    spikes = np.asarray(observed["spikes"])
    v = np.asarray(observed["v"])
    T, n = spikes.shape
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    t, i = np.nonzero(spikes[:, :n_raster] > 0)
    axes[0].scatter(t, i, s=2, c="k", marker="|")
    axes[0].set(ylabel="neuron", title=f"spikes ({min(n, n_raster)} of {n} neurons)")
    axes[0].set_ylim(-0.5, min(n, n_raster) - 0.5)
    for k in range(min(n_traces, n)):
        axes[1].plot(np.arange(T), v[:, k], lw=1, label=f"neuron {k}")
    axes[1].set(ylabel="membrane v", title="membrane potentials")
    axes[1].legend(loc="upper right", fontsize=8)
    for k in range(outputs.shape[-1]):
        axes[2].plot(np.arange(T), outputs[:, k], lw=1, label=f"output {k}")
    axes[2].set(xlabel="time step", ylabel="readout", title="outputs")
    axes[2].legend(loc="upper right", fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
