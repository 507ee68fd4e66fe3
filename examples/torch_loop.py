"""A plain PyTorch loop wrapped in three lines (watch, log_loss, report).

    python examples/torch_loop.py [--logdir runs/examples] [--quick]      (needs torch: pip install torch==2.13.0)
"""

import os

from _common import moons, parse

import torch

import gradmon.torch

args = parse(__doc__.splitlines()[0])
Xn, yn = moons()
X, y = torch.tensor(Xn, dtype=torch.float32), torch.tensor(yn)
torch.manual_seed(0)
model = torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.LazyLinear(64), torch.nn.Sigmoid())],
                            torch.nn.Linear(64, 2))
model(X[:1])  # materialise the lazy layers
opt = torch.optim.SGD(model.parameters(), lr=0.1)

watcher = gradmon.torch.watch(model, optimizer=opt, logdir=os.path.join(args.logdir, "torch-loop"),  # 1
                              probe=(X[:256], y[:256]), loss_fn=torch.nn.functional.cross_entropy)
for epoch in range(3 if args.quick else 15):
    for i in range(0, len(X), 32):
        loss = torch.nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        watcher.log_loss(loss)                                                                         # 2
report = watcher.report()                                                                              # 3
watcher.close()
print(f"torch loop: status {report.status}; findings: {[(f.code, f.layer) for f in report.findings]}")
