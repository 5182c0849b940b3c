"""The recipe page's code, run as it stands by tests/test_docs.py (random stand-in data)."""

import torch
import torch.nn.functional as F
import torchvision

import gatekit

# Stand-ins for what you have: trained weights and a data loader.
trained = torchvision.models.resnet18(num_classes=10).state_dict()
data = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)

# [warm]
backbone = torchvision.models.resnet18(num_classes=10)
backbone.load_state_dict(trained)  # or resnet18(weights="IMAGENET1K_V1") for ImageNet
gater = torchvision.models.resnet18(num_classes=10)
gater.load_state_dict(trained)  # the gater trunk starts from the same features
gater.fc = torch.nn.Identity()
# "inner" gates the first convs of each block: a closed gate also empties the next conv's
# input channel.  init_bias=3 starts with every gate open: the trained model, unchanged.
model = gatekit.gate_model(backbone, gater, sites="inner", init_bias=3.0)
# [/warm]

# [budget]
costs = gatekit.gate_costs(model, torch.zeros(1, 3, 32, 32))  # FLOPs per image each gate saves
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
epochs, ramp = 2, 1  # the budget's weight ramps up over the first epoch
for epoch in range(epochs):
    for step, (images, labels) in enumerate(loader):
        progress = epoch + step / len(loader)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss = loss + 5.0 * min(1.0, progress / ramp) * gatekit.flops_budget_loss(
            model.last_gates, costs, budget=0.6)  # 60% of the gated convs' FLOPs
        # Each gate's open probability over the batch is pulled to a Beta(0.6, 0.4) shape,
        # so no gate can sit always on or always off; annealed to 0 by the last epoch.
        loss = loss + 2.0 * (1 - progress / epochs) * gatekit.batch_shaping_loss(model.last_probs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
# [/budget]

# [measure]
model.eval()
stats = gatekit.GateStats.for_model(model, num_classes=10)
with torch.no_grad():
    for images, labels in loader:
        model(images)
        stats.update(model.last_gates, labels)
open_flops = float((costs * stats.open_fraction).sum() / costs.sum())
paper = stats.with_thresholds(always_on=0.99, always_off=0.01)  # GaterNet's 1% / 99%
print(f"gated convs run at {open_flops:.0%} of their FLOPs; "
      f"{paper.input_dependent_count} of {stats.num_gates} gates depend on the input")
# [/measure]
