"""PyTorch reference: one training step of the same CNN on this CPU (batch 128, AdamW), for the
README's comparison. Needs requirements-bench.txt.

    python benchmarks/bench_torch_step.py
"""
import time, torch, torch.nn as nn
torch.set_num_threads(2)
def block(i,o): return [nn.Conv2d(i,o,3,padding=1), nn.BatchNorm2d(o), nn.ReLU()]
m = nn.Sequential(*block(1,32),*block(32,32),nn.MaxPool2d(2),*block(32,64),*block(64,64),nn.MaxPool2d(2),*block(64,128),*block(128,128),nn.AdaptiveAvgPool2d(1),nn.Flatten(),nn.Linear(128,256),nn.ReLU(),nn.Dropout(0.5),nn.Linear(256,10))
opt = torch.optim.AdamW(m.parameters(), 1e-3); x = torch.rand(128,1,28,28); y = torch.randint(0,10,(128,))
def step():
    opt.zero_grad(); l = nn.functional.cross_entropy(m(x), y); l.backward(); opt.step()
for _ in range(3): step()
t=time.perf_counter()
for _ in range(15): step()
dt=(time.perf_counter()-t)/15; print(f"torch {torch.__version__}: {dt*1000:.0f} ms/step, {dt*429:.0f} s/epoch (429 steps)")
