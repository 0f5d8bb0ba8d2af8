"""Instance study: torchvision Mask R-CNN fine-tuning, SAM prompted by its boxes, COCO-style evaluation.

Modules: ``maskrcnn`` (build, train, predict; ``instseg-train``), ``sam`` (variants, prompt
modes, batched decoder; ``instseg-sam``), ``weights`` (COCO and SAM checkpoints), ``coco``
(labels <-> COCO JSON, RLE), ``evaluate`` (numpy matcher; ``instseg-evaluate``), ``plots``.
Importing this package loads no framework; torch is imported inside the functions that need it.
"""
from .errors import InstsegError

__all__ = ["InstsegError"]
