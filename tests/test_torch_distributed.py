"""Data-parallel monitoring with real torch.distributed: two gloo processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, store: str, logdir: str) -> None:
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
    watcher = gradmon.torch.watch(net, optimizer=opt, logdir=logdir, curvature_every=0, console=False)
    for epoch in range(2):
        for i in range(0, len(X), 32):
            loss = torch.nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            watcher.log_loss(loss)
    grads = [p.grad.clone() for p in net.parameters()]
    watcher.close()
    # DDP averaged the gradients: both ranks hold the same ones
    gathered = [None, None]
    dist.all_gather_object(gathered, [g.numpy() for g in grads])
    if rank == 0:
        import numpy as np

        for a, b in zip(*gathered):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    dist.barrier()  # nobody leaves while another rank still talks
    dist.destroy_process_group()


def test_two_gloo_ranks_rank0_aggregates_and_names_the_rank(tmp_path):
    logdir = tmp_path / "run"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(logdir)), nprocs=2, join=True)
    events = list(logdir.glob("events.out.tfevents*"))
    assert len(events) == 1  # rank 0 alone writes
    report = json.loads((logdir / "report.json").read_text())
    assert report["extra"]["world_size"] == 2
    dead = [f for f in report["findings"] if f["code"] == "dead_units"]
    assert dead and dead[0]["evidence"]["ranks"] == [1] and "on rank 1 of 2" in dead[0]["message"]
    first = report["layers"][0]
    # averaged over ranks: rank 0 has no dead units, rank 1 has all of them dead
    assert first["dead_fraction"]["median"] == pytest.approx(0.5, abs=0.05)
