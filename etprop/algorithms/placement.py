"""Where a learner's arrays live on a device mesh: data parallel, with sharded traces.

``etprop.compile(..., mesh=Mesh(devices, ("data",)), batch_axis="data")`` places

* the batch of every hidden state, eligibility trace and input on ``batch_axis``
  (``NamedSharding(mesh, P(batch_axis))``; inputs with time leading ``P(None, batch_axis)``);
* parameters (and states without a batch axis) replicated, so the online gradient, a sum over
  the batch inside the jitted drivers, is reduced by XLA's own collectives;
* with ``trace_axis=`` another mesh axis, D-RTRL's per-parameter traces (``B x |W| x S``) also
  along the weight's output (last) axis: a model whose traces exceed one device's memory trains
  on several.

The drivers call `Placement.put` on what they are given and `Placement.constrain` on what they
carry from step to step, so placements hold across steps, windows, chunks and optimiser
updates; nothing here computes, and without a placement nothing changes. One process or many
(``jax.distributed``) alike: the mesh spans ``jax.devices()``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from etprop.errors import ArgumentError

__all__ = ["Placement", "make_placement"]


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
    """A mesh and the axes a learner's arrays are split along (see the module docstring)."""

    mesh: Mesh
    batch_axis: str
    batch_size: int
    trace_axis: str | None = None

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batched(self, ndim: int, lead: int = 0) -> NamedSharding:
        """The batch axis (after ``lead`` leading axes, e.g. time) on ``batch_axis``."""
        return NamedSharding(self.mesh, PartitionSpec(*([None] * lead), self.batch_axis,
                                                      *([None] * (ndim - lead - 1))))

    def of_leaf(self, a, lead: int = 0, trace_last: bool = False, batched: bool | None = None) -> NamedSharding:
        """A leaf's sharding: batch-split when axis ``lead`` is the batch (``batched``; None: when
        that axis has the batch's length), replicated otherwise; ``trace_last`` also splits its
        last axis on ``trace_axis`` where it divides."""
        shape = np.shape(a)
        if batched is None:
            batched = len(shape) > lead and shape[lead] == self.batch_size
        if not batched or len(shape) <= lead:
            return self.replicated()
        spec = [None] * len(shape)
        spec[lead] = self.batch_axis
        if (trace_last and self.trace_axis is not None and len(shape) > lead + 1
                and shape[-1] % self.mesh.shape[self.trace_axis] == 0):
            spec[-1] = self.trace_axis
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def trace_shardings(self, traces, param_trace: list):
        """Shardings of a learner's traces; ``param_trace[i]``: relation ``i`` holds per-parameter
        traces (split along their last axis on ``trace_axis`` too). The trace learners' traces
        all lead with the batch; other learners' leaves are batch-split by their shape."""
        if isinstance(traces, dict) and "rel" in traces and len(traces["rel"]) == len(param_trace):
            rel = [jax.tree.map(lambda a, p=p: self.of_leaf(a, trace_last=p, batched=True), t)
                   for t, p in zip(traces["rel"], param_trace)]
            rest = {k: jax.tree.map(self.of_leaf, v) for k, v in traces.items() if k != "rel"}
            return {**rest, "rel": rel}
        return jax.tree.map(self.of_leaf, traces)

    def state_shardings(self, hidden, others, batched_other) -> tuple:
        """Shardings of the hidden states (batch leading) and the other states (batched or not)."""
        hs = tuple(jax.tree.map(lambda a: self.of_leaf(a, batched=True), h) for h in hidden)
        os_ = tuple(jax.tree.map(lambda a, b=b: self.of_leaf(a, batched=bool(b)), o)
                    for o, b in zip(others, batched_other))
        return hs, os_

    @property
    def local_batch(self) -> int:
        """The batch each process holds: ``batch_size / jax.process_count()``."""
        return self.batch_size // jax.process_count()

    def put(self, tree, lead: int = 0):
        """``tree`` placed on the mesh (eager: ``jax.device_put``; traced: a sharding constraint).
        With several processes a leaf whose axis ``lead`` holds this process's slice of the batch
        (``local_batch``) becomes the global array of all processes' slices."""
        if jax.process_count() > 1:
            return jax.tree.map(lambda a: self._global(a, lead), tree)
        return self.constrain(tree, jax.tree.map(lambda a: self.of_leaf(a, lead), tree))

    def _global(self, a, lead: int):
        if isinstance(a, jax.core.Tracer) or (isinstance(a, jax.Array) and not a.is_fully_addressable):
            return self.constrain(a, self.of_leaf(a, lead)) if isinstance(a, jax.core.Tracer) else a
        shape = np.shape(a)
        if len(shape) > lead and shape[lead] == self.local_batch != self.batch_size:
            full = shape[:lead] + (self.batch_size,) + shape[lead + 1:]
            sharding = self.of_leaf(np.empty(full, np.int8), lead, batched=True)
            return jax.make_array_from_process_local_data(sharding, np.asarray(a), full)
        return jax.device_put(a, self.of_leaf(a, lead))  # the same value in every process

    def global_example(self, inputs: tuple) -> tuple:
        """Example inputs of one step at the global batch (zeros where a process gave its slice)."""
        if jax.process_count() == 1:
            return inputs

        def one(a):
            shape = np.shape(a)
            if shape and shape[0] == self.local_batch != self.batch_size:
                return np.zeros((self.batch_size,) + shape[1:], np.asarray(a).dtype)
            return a
        return jax.tree.map(one, inputs)

    @staticmethod
    def constrain(tree, shardings):
        """``tree`` with ``shardings`` (a matching tree), inside jit or not."""
        def one(a, s):
            if isinstance(a, jax.core.Tracer):
                return jax.lax.with_sharding_constraint(a, s)
            return jax.device_put(a, s)
        return jax.tree.map(one, tree, shardings)


def make_placement(mesh, batch_axis, trace_axis, batch_size) -> Placement | None:
    """`Placement` from `etprop.compile`'s arguments, each checked (None without a mesh)."""
    if mesh is None:
        if batch_axis is not None or trace_axis is not None:
            raise ArgumentError("batch_axis= and trace_axis= need mesh= (a jax.sharding.Mesh)")
        return None
    if not isinstance(mesh, Mesh):
        raise ArgumentError(f"mesh must be a jax.sharding.Mesh, e.g. Mesh(np.array(jax.devices()), ('data',)); got "
                            f"{type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    batch_axis = names[0] if batch_axis is None else batch_axis
    if batch_axis not in names:
        raise ArgumentError(f"batch_axis={batch_axis!r} is not an axis of the mesh; its axes are {list(names)}")
    if trace_axis is not None and (trace_axis not in names or trace_axis == batch_axis):
        raise ArgumentError(f"trace_axis={trace_axis!r} must be another axis of the mesh than batch_axis "
                            f"{batch_axis!r}; the mesh's axes are {list(names)}")
    if batch_size is None:
        raise ArgumentError("mesh= splits the batch over devices: give batch_size= as well")
    n = mesh.shape[batch_axis]
    if batch_size % n:
        raise ArgumentError(f"batch_size={batch_size} does not divide over the {n} devices of mesh axis "
                            f"{batch_axis!r}; use a batch that is a multiple of {n}")
    return Placement(mesh, batch_axis, int(batch_size), trace_axis)
