"""vpog: Visual Patch-wise Object pose estimation with Groups of templates.

A query crop of an unseen object is matched patch by patch against a group of rendered templates;
a flow head predicts where each template pixel lands in the query; a differentiable PnP layer
(EPro-PnP) turns those 2D-3D correspondences into a pose.

Importing `vpog` never fails because the C++/CUDA extension or Triton is missing: every op falls
back to its PyTorch reference path and says so once (see `python -m vpog.info`).
"""

__version__ = "0.1.0"
