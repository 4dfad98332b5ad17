"""Data parallel and sharded traces on a device mesh (`etprop.algorithms.placement`).

The device count is fixed when jax starts, so the checks run in a subprocess with four forced
CPU devices (``jax_num_cpu_devices``); this file is also that subprocess's script. Each check
compares the learner on the mesh with the same learner on one device (float32: to rounding of
the sums' order) and reads the placements from the arrays' shardings.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

B, T, I, H, O = 8, 12, 3, 8, 2
ALGOS = ["d_rtrl", "es_d_rtrl", "hybrid", "eprop", "ostl_recurrent", "ostl_feedforward", "bptt", "rtrl"]


def _multihost_worker(pid: int, port: int) -> dict:
    """One of two processes (two CPU devices each) under `jax.distributed`, gloo collectives on
    the loopback address; each gives the learner its half of the batch."""
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.sharding import Mesh

    import etprop

    xs, ys, model, mse = _global_problem()
    half = slice(pid * B // 2, (pid + 1) * B // 2)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    learner = etprop.compile(model, "d_rtrl", xs[0, half], batch_size=B, mesh=mesh)
    grads, loss = learner.etrace_grad(xs[:, half], ys[:, half], mse)
    local = lambda a: np.asarray(a.addressable_data(0) if not a.is_fully_addressable else a).tolist()
    out = dict(devices=jax.device_count(), local=jax.local_device_count(), loss=local(loss),
               grads={k: local(v) for k, v in grads.items()})
    jax.distributed.shutdown()
    return out


def _global_problem():
    """The global batch of the multi-host check, its model and loss (the same in every process)."""
    import brainstate
    import jax
    import jax.numpy as jnp

    from tests.algorithms.models import ElementwiseRNN

    model = ElementwiseRNN(I, H, O)
    for st in model.states(brainstate.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, O))
    return xs, ys, model, lambda o, y: jnp.sum((o - y) ** 2)


def _worker(case: str) -> dict:
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import brainstate
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh

    import etprop
    from tests.algorithms.models import ElementwiseRNN, LIFExpSyn

    def model(cls):
        m = cls(I, H, O)
        for st in m.states(brainstate.HiddenState).values():
            st.value = jnp.zeros((B,) + st.value.shape)
        return m

    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, O))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    flat = lambda t: np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(t)])
    rel = lambda a, b: float(np.max(np.abs(flat(a) - flat(b))) / max(np.max(np.abs(flat(b))), 1e-30))
    data = Mesh(np.array(jax.devices()), ("data",))
    two = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    def spec(a):  # the PartitionSpec without trailing Nones (P('data', None) is P('data'))
        if not hasattr(a.sharding, "spec"):
            return "single"
        parts = list(a.sharding.spec)
        while parts and parts[-1] is None:
            parts.pop()
        return str(jax.sharding.PartitionSpec(*parts))
    out = {}
    if case == "equal":
        for cls in (ElementwiseRNN, LIFExpSyn):
            for algo in ALGOS:
                ref = etprop.compile(model(cls), algo, xs[0], batch_size=B)
                lrn = etprop.compile(model(cls), algo, xs[0], batch_size=B, mesh=data)
                g1, l1 = ref.etrace_grad(xs, ys, mse)
                g4, l4 = lrn.etrace_grad(xs, ys, mse)
                hidden = [st.value for st in lrn.model.states(brainstate.HiddenState).values()]
                out[f"{cls.__name__}/{algo}"] = dict(
                    grad=rel(g4, g1), loss=rel(l4, l1), hidden=sorted({spec(h) for h in hidden}),
                    traces=sorted({spec(t) for t in jax.tree.leaves(lrn.etrace.value)}),
                    params=sorted({spec(v) for v in jax.tree.leaves(lrn.params())}))
    elif case == "drivers":
        ref = etprop.compile(model(ElementwiseRNN), "d_rtrl", xs[0], batch_size=B)
        lrn = etprop.compile(model(ElementwiseRNN), "d_rtrl", xs[0], batch_size=B, mesh=data)
        for name, run in (
                ("window", lambda lr: lr.etrace_grad(xs, ys, mse, window=4)[0]),
                ("step_fn", lambda lr: lr.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(
                    jax.vmap(mse)(lr(x), y)))),
                ("train_online", lambda lr: (lr.train_online(xs, ys, mse, optax.sgd(0.01)), lr.params())[1]),
                ("call", lambda lr: [lr(xs[t]) for t in range(3)][-1])):
            a, b = run(ref), run(lrn)
            h = lrn.graph.mf.values()[1][0]
            out[name] = dict(err=rel(b, a), hidden=spec(h),
                             traces=sorted({spec(t) for t in jax.tree.leaves(lrn.etrace.value)}))
        try:
            etprop.compile(ElementwiseRNN(I, H, O), "d_rtrl", jnp.zeros((6, I)), batch_size=6, mesh=data)
        except etprop.ArgumentError as err:
            out["indivisible"] = str(err)
    elif case == "trace_axis":
        ref = etprop.compile(model(ElementwiseRNN), "d_rtrl", xs[0], batch_size=B)
        lrn = etprop.compile(model(ElementwiseRNN), "d_rtrl", xs[0], batch_size=B, mesh=two, trace_axis="model")
        g1, _ = ref.etrace_grad(xs, ys, mse)
        g4, _ = lrn.etrace_grad(xs, ys, mse)
        names = [r.leaf_name for r in lrn.graph.relations]
        per = {n: [spec(a) for a in t] for n, t in zip(names, lrn.etrace.value["rel"])}
        memory = {}
        for n_dev in (1, 2, 4):
            mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
            lr = etprop.compile(model(ElementwiseRNN), "d_rtrl", xs[0], batch_size=B, mesh=mesh)
            fn = lr.sequence_fn(mse)
            _, hidden, others = lr.graph.mf.values()
            compiled = jax.jit(fn).lower(lr.params(), hidden, others, lr.etrace.value, xs, ys,
                                         jnp.ones(T)).compile()
            shard_bytes = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(lr.etrace.value))
            memory[n_dev] = dict(trace_bytes_per_device=int(shard_bytes),
                                 argument_bytes=int(compiled.memory_analysis().argument_size_in_bytes))
        out = dict(err=rel(g4, g1), per=per, memory=memory)
    return out


@functools.lru_cache(maxsize=None)
def _run_cases(cases: str) -> dict:
    """``{case: result}`` of the ``+``-separated ``cases``, run in one 4-device subprocess (one
    start of jax for several checks)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, cases], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(case: str) -> dict:
    together = "drivers+trace_axis"  # the tests of these two share their subprocess
    return _run_cases(together if case in together.split("+") else case)[case]


def test_every_learner_on_four_devices_equals_one():
    res = _run("equal")
    assert len(res) == 2 * len(ALGOS)
    for name, r in res.items():
        assert r["grad"] < 1e-5 and r["loss"] < 1e-5, (name, r)
        assert r["hidden"] == ["P('data',)"], (name, r)
        assert r["params"] == ["P()"], (name, r)
        assert all(s == "P('data',)" for s in r["traces"]), (name, r)


def test_placements_hold_through_every_driver():
    res = _run("drivers")
    assert res.pop("indivisible") == ("batch_size=6 does not divide over the 4 devices of mesh axis 'data'; use a "
                                      "batch that is a multiple of 4")
    for name, r in res.items():
        assert r["err"] < 1e-5, (name, r)
        assert r["hidden"] == "P('data',)", (name, r)
        assert r["traces"] == ["P('data',)"], (name, r)


def test_sharded_traces_and_memory_per_device():
    res = _run("trace_axis")
    assert res["err"] < 1e-5
    assert res["per"]["w"] == ["P('data', None, 'model')"]  # (B, I, H): batch and output axis
    mem = {int(k): v for k, v in res["memory"].items()}
    per = [mem[n]["trace_bytes_per_device"] for n in (1, 2, 4)]
    assert per[0] == 2 * per[1] == 4 * per[2], mem
    assert mem[4]["argument_bytes"] < mem[2]["argument_bytes"] < mem[1]["argument_bytes"], mem


def test_two_processes_under_jax_distributed_equal_one():
    import socket

    import jax.numpy as jnp
    import numpy as np

    import etprop

    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, __file__, "multihost", str(pid), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for pid in (0, 1)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    xs, ys, model, mse = _global_problem()
    ref = etprop.compile(model, "d_rtrl", xs[0], batch_size=B)
    g, loss = ref.etrace_grad(xs, ys, mse)
    for out in outs:  # both processes hold the whole (replicated) gradient
        assert out["devices"] == 4 and out["local"] == 2
        np.testing.assert_allclose(out["loss"], float(loss), rtol=1e-5)
        for k in g:
            np.testing.assert_allclose(jnp.asarray(out["grads"][k]), g[k], rtol=1e-5, atol=1e-6)


def test_bad_meshes_are_named():
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import etprop
    from tests.algorithms.models import ElementwiseRNN

    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = np.zeros((B, I), np.float32)
    with pytest.raises(etprop.ArgumentError, match="batch_axis='batch' is not an axis of the mesh"):
        etprop.compile(ElementwiseRNN(I, H, O), "d_rtrl", x, batch_size=B, mesh=mesh, batch_axis="batch")
    with pytest.raises(etprop.ArgumentError, match="mesh must be a jax.sharding.Mesh"):
        etprop.compile(ElementwiseRNN(I, H, O), "d_rtrl", x, batch_size=B, mesh="data")
    with pytest.raises(etprop.ArgumentError, match="need mesh="):
        etprop.compile(ElementwiseRNN(I, H, O), "d_rtrl", x, batch_size=B, trace_axis="model")


if __name__ == "__main__":
    if sys.argv[1] == "multihost":
        print(json.dumps(_multihost_worker(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps({case: _worker(case) for case in sys.argv[1].split("+")}))
