"""A plain PyTorch loop wrapped in three lines (watch, log_loss, report): a deep sigmoid MLP whose
gradients vanish towards the input, with curvature measured on the last batch.

    python examples/torch_loop.py [--logdir runs/examples] [--quick]      (needs torch: pip install torch==2.13.0)
"""

import os

from _common import moons, parse

import torch
import torch.nn.functional as F

import gradmon.torch

args = parse(__doc__.splitlines()[0])
Xn, yn = moons()
X, y = torch.tensor(Xn, dtype=torch.float32), torch.tensor(yn)
torch.manual_seed(0)
model = torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.LazyLinear(64), torch.nn.Sigmoid())],
                            torch.nn.Linear(64, 2))
model(X[:1])  # materialise the lazy layers
opt = torch.optim.SGD(model.parameters(), lr=0.1)

watcher = gradmon.torch.watch(model, optimizer=opt, logdir=os.path.join(args.logdir, "torch-loop"),   # 1
                              loss_fn=F.cross_entropy, curvature_every=25)
for epoch in range(3 if args.quick else 15):
    for i in range(0, len(X), 32):
        xb, yb = X[i:i + 32], y[i:i + 32]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        watcher.log_loss(loss, target=yb)       # 2: the loss series, and the targets for curvature
report = watcher.report()                       # 3
watcher.close()
found = ", ".join(f"{f.code}({f.layer or '-'})" for f in report.findings) or "none"
print(f"torch loop: status {report.status}; {len(report.curvature)} curvature measurements; findings: {found}")
