"""Training code shared by ``examples/imagenet_gaternet.py`` and ``examples/cifar_gaternet.py``.

One concept per module: ``cli`` (flags), ``distributed`` (torchrun set-up), ``image_folder``
(ImageFolder trees and the DataLoader pipeline), ``tensor_data`` (in-memory data augmented
on the device), ``cifar_data`` (CIFAR decoding and cache), ``standin`` (the procedural data
set), ``models`` (models by name), ``optim`` (the optimiser recipe), ``engine`` (epoch and
evaluation loops), ``checkpoint`` (atomic checkpoints, RNG state), ``progress`` (progress
output, metrics log), ``report`` (FLOPs, gate statistics) and ``run`` (a whole run).
"""
