"""The quickstart's code, run as it stands by tests/test_docs.py (random stand-in data)."""

# [train]
import torch
import torch.nn.functional as F
import torchvision

import gatekit

# Your model and your data, as they are.
backbone = torchvision.models.resnet18(num_classes=10)
data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
train_loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)

# The gater: any CNN without its classifier, mapping images to (N, D) features.
gater = torchvision.models.resnet18()
gater.fc = torch.nn.Identity()

model = gatekit.gate_model(backbone, gater, sites="residual", estimator="semhash")
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

model.train()
for images, labels in train_loader:
    output = model(images)  # exactly what the backbone returns
    loss = F.cross_entropy(output, labels)
    loss = loss + gatekit.gate_l1_loss(model.last_gates, weight=0.1)  # optional
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# [/train]

val_loader = train_loader

# [stats]
stats = gatekit.GateStats.for_model(model, num_classes=10)
model.eval()  # binary gates: 1(logit > 0)
with torch.no_grad():
    for images, labels in val_loader:
        model(images)
        stats.update(model.last_gates, labels)
print(stats.table())
print(stats.always_on_count, stats.always_off_count, stats.input_dependent_count)
gatekit.plots.save_plots(stats, "gate_plots")  # PNGs: per-layer open fraction, open gates per sample, ...
# [/stats]
