"""Training code shared by ``examples/imagenet_gaternet.py`` and ``examples/cifar_gaternet.py``.

Start with ``train``: the whole program, top to bottom (model, losses, step, statistics).
The rest is plumbing, one concept per module: ``config`` (the run's settings, one typed
dataclass whose fields declare the flags), ``cli`` (argparse generated from it), ``main``
(parse, run, report errors), ``models`` (backbones and gater trunks by name),
``warm_start`` (loading trained weights), ``losses`` and ``ramp`` (the loss terms and their
weight schedules), ``distill`` (distillation from a dense teacher, one more term), ``optim``
(the optimiser recipe), ``checkpoint`` (atomic checkpoints, RNG state), ``distributed``
(torchrun set-up), ``progress`` (progress output, metrics log), ``report`` (FLOPs, gate
statistics), ``rebuild`` (a trained run's model from its weights and ``results.json``) and
the data: ``image_folder`` (ImageFolder trees and the DataLoader pipeline), ``tensor_data``
(in-memory data augmented on the device), ``cifar_data`` (CIFAR decoding and cache, the
CIFAR script's data), ``standin`` (the procedural data set).

Installed with gatekit (``pip install -e ".[examples]"``), so that the benchmarks import it
by name; the example scripts beside it import it as their neighbour.
"""
