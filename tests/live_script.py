"""A training script for the live page's browser test (tests/test_live_page.py).

Trains an MLP with a short sleep per step until the file ``stop`` appears in the working
directory; at the first step after ``go`` appears, its batch holds a NaN (the step number
is written to ``nan_step``). The test decides when, so the NaN reaches the page while it
is open, whatever the machine's speed.
"""

import time
from pathlib import Path

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                      nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
nan_at = None
for step in range(20000):
    if Path("stop").exists():
        break
    x = torch.randn(32, 16)
    if nan_at is None and Path("go").exists():
        nan_at = step
        Path("nan_step").write_text(str(step))
        x[0, 0] = float("nan")
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), x[:, :4].argmax(dim=1))
    loss.backward()
    opt.step()
    time.sleep(0.01)
print("stopped", flush=True)
