"""Data-parallel monitoring with real torch.distributed: two gloo processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, store: str, logdir: str, oracle: str) -> None:
    sys.path.insert(0, str(ROOT))
    import gradmon.torch

    # rendezvous through a file (no port race); gloo then talks over loopback
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    with torch.no_grad():  # every first-layer unit adds its inputs with positive weights
        net[0].weight.abs_()
        net[0].bias.zero_()
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    # rank 0 sees positive inputs (units fire), rank 1 negative ones (every unit is off on its shard)
    X = torch.rand(640, 2, generator=g) + 0.1
    X = X if rank == 0 else -X
    y = (X[:, 0] > X[:, 1]).long()
    import gradmon.adapters.distributed as distributed

    sent = {}
    gather = distributed.gather_objects

    def spy(obj):  # what this rank sends to rank 0 at close()
        sent["obj"] = obj
        return gather(obj)

    distributed.gather_objects = spy
    watcher = gradmon.torch.watch(net, optimizer=opt, logdir=logdir, curvature_every=0, console=False,
                                  tensorboard_every=3)
    losses, preclip = [], []
    for epoch in range(2):
        for i in range(0, len(X), 32):
            loss = torch.nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            preclip.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)))
            opt.step()
            watcher.log_loss(loss)
            losses.append(float(loss.detach()))
    grads = [p.grad.clone() for p in net.parameters()]
    watcher.close()
    # ranks exchange per-unit series (steps x units), never a tensor of the model
    arrays = sent["obj"]["history"]
    units = len(watcher.monitor.units)
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    payload = {"tensors": _has_tensor(sent["obj"]), "shapes_ok": all(
        shape in ((40,), (40, units)) for shape in shapes.values()), "elements": int(sum(
            v.size for v in arrays.values()))}
    # DDP averaged the gradients: both ranks hold the same ones
    gathered = [None, None]
    dist.all_gather_object(gathered, {"grads": [g.numpy() for g in grads], "losses": losses, "payload": payload,
                                      "preclip": preclip, "recorded": watcher.monitor.history.scalar("grad_norm")})
    if rank == 0:
        for a, b in zip(gathered[0]["grads"], gathered[1]["grads"]):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        Path(oracle).write_text(json.dumps({
            "mean_loss": np.mean([gathered[0]["losses"], gathered[1]["losses"]], axis=0).tolist(),
            "preclip": gathered[0]["preclip"], "preclip_rank1": gathered[1]["preclip"],
            "recorded_rank1": np.asarray(gathered[1]["recorded"]).tolist(),
            "payloads": [gathered[0]["payload"], gathered[1]["payload"]]}))
    dist.barrier()  # nobody leaves while another rank still talks
    dist.destroy_process_group()


def _has_tensor(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def test_two_gloo_ranks_rank0_aggregates_and_names_the_rank(tmp_path):
    from gradmon.history import History
    from tests.tbutil import read_scalars, read_texts

    logdir = tmp_path / "run"
    oracle_file = tmp_path / "oracle.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(logdir), str(oracle_file)), nprocs=2, join=True)
    oracle = json.loads(oracle_file.read_text())
    for payload in oracle["payloads"]:  # per-unit series only: 40 steps x (a few scalars + 4 quantities x 2 units)
        assert payload == {"tensors": False, "shapes_ok": True, "elements": 40 * (1 + 1 + 4 * 2)}
    events = list(logdir.glob("events.out.tfevents*"))
    assert len(events) == 1  # rank 0 alone writes
    report = json.loads((logdir / "report.json").read_text())
    assert report["extra"]["world_size"] == 2
    dead = [f for f in report["findings"] if f["code"] == "dead_units"]
    assert dead and dead[0]["evidence"]["ranks"] == [1] and "on rank 1 of 2" in dead[0]["message"]
    assert dead[0]["layer"] == "linear0"
    first = report["layers"][0]
    # averaged over ranks: rank 0 has no dead units, rank 1 has all of them dead
    assert first["dead_fraction"]["median"] == pytest.approx(0.5, abs=0.05)

    # the history behind the report's plots is the rank average too, step by step
    history = History.load(logdir / "history.npz")
    assert len(history) == 40
    dead_series = history.layer("dead_fraction")[:, 0]
    measured = dead_series[np.isfinite(dead_series)]  # (the first batch of 32 is pooled with the next)
    assert len(measured) >= 39
    np.testing.assert_allclose(measured, 0.5)
    np.testing.assert_allclose(history.scalar("loss"), oracle["mean_loss"], rtol=1e-6)
    assert [entry["train"] for entry in report["loss"]] == pytest.approx(oracle["mean_loss"], rel=1e-6)
    # gradient norms are read after DDP averaged them and before clipping: the same on both ranks
    np.testing.assert_allclose(history.scalar("grad_norm"), oracle["preclip"], rtol=1e-5)
    np.testing.assert_allclose(oracle["recorded_rank1"], oracle["preclip_rank1"], rtol=1e-5)

    # TensorBoard agrees: the rank-dependent scalars are the rank average, written once per step.  The
    # dead fraction is 0.5 at every step (a constant series is not charted; the diagnosis names its value)
    scalars = read_scalars(logdir)
    assert "dead_fraction/00_linear0" not in scalars
    texts = read_texts(logdir)
    assert "`dead_fraction/00_linear0 = 0.5`" in texts["alerts/text_summary"][-1][1]
    loss_tb = dict(scalars["loss/train"])
    steps = sorted(loss_tb)
    assert len(steps) == len(scalars["loss/train"]) and len(steps) >= 13  # every third record or more
    for step, value in loss_tb.items():
        assert value == pytest.approx(oracle["mean_loss"][step], rel=1e-5)
    alerts = " ".join(text for _, text in texts.get("alerts/text_summary", []))
    assert "dead_units" in alerts and "on rank 1 of 2" in alerts
