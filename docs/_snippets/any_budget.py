"""The any-budget page's code, run as it stands by tests/test_docs.py (random stand-in data)."""

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.models import resnet20, resnet20_gater

data = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)

# [build]
model = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", init_bias=3.0,
                           budget_input=True)  # the head reads a budget per sample
costs = gatekit.gate_costs(model, torch.zeros(1, 3, 32, 32))
# [/build]

# [train]
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
low, high = 0.3, 1.0
for images, labels in loader:
    budget = torch.empty(len(images)).uniform_(low, high)  # every sample its own budget
    logits = model(images, budget=budget)
    loss = (F.cross_entropy(logits, labels)
            + 20.0 * gatekit.flops_budget_loss(model.last_gates, costs, model.last_budget))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# [/train]

# [serve]
model.eval()
fast = gatekit.skip_compute(model)  # computes only the open filters
with torch.no_grad():
    images = torch.randn(2, 3, 32, 32)
    for b in (0.4, 0.9):  # turn the knob at run time: one model, two budgets
        out = fast(images, budget=b)
        kept = (fast.last_gates * costs).sum(1) / costs.sum()
        print(f"budget {b}: logits {tuple(out.shape)}, kept fraction per image {kept.tolist()}")
# [/serve]

# [calibrate]
with FlopCounterMode(display=False) as counter:  # the backbone's FLOPs, every gate open
    resnet20().eval()(torch.zeros(1, 3, 32, 32))
backbone_flops = counter.get_total_flops()
calibration = torch.utils.data.DataLoader(data, batch_size=16)  # images held for it
budget_map = gatekit.calibrate_budget(model, calibration, costs, dense_flops=backbone_flops)
with torch.no_grad():
    model(images, budget=0.5)  # now: half of the backbone's FLOPs, on average
print("kept on the calibration images at the knots:", budget_map.achieved[::20].tolist())
# [/calibrate]
