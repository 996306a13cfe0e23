"""Cross-task consistency terms: a task's prediction checked against another task's labels.

``loss.consistency: {depth_normal: w}``: the term is added, times its weight, to the per-pixel
loss of the task whose prediction it checks (depth). A one-task model has none.

Depth-normal: the depth prediction against the normal labels.

On a planar surface with camera-frame normal ``n`` at offset ``d``, inverse depth is affine in
the pixel coordinates, ``1/z(u, v) = (n_x (u - c_x) / f_x + n_y (v - c_y) / f_y + n_z) / d``, so
its image gradient is parallel to ``(n_x / f_x, n_y / f_y)``: to ``(n_x, n_y)`` for square
pixels, whatever the focal length, the principal point or ``d``. Zoom, crop and flip
augmentations keep the relation (a flip negates ``n_x`` and the x gradient alike), and no camera
intrinsics are needed.

The term is ``1 - cos`` between the central-difference gradient of the predicted inverse depth
and the labeled normal's ``(n_x, n_y)``, at pixels inside a surface (the normal label equal to
its four neighbours' within ~8 degrees) tilted enough for ``(n_x, n_y)`` to have a direction
(``|(n_x, n_y)| >= 0.2``, ~12 degrees off the viewing axis). It lets the depth head learn from the
normal labels; a one-task model has no such term.

Which way a format's normal x / y axes point is read from the labels: the sign of the agreement
between the labeled depth's gradient and the labeled normals over the batch (one number; no
depth structure enters the term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvmtl.distributed import all_reduce_sum

MIN_TILT = 0.2  # |(n_x, n_y)| below this: the surface faces the camera, no gradient direction
SAME_SURFACE_COS = 0.99  # neighbours' normals within ~8 degrees: inside one surface
_EPS = 1e-6


def central_gradient(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` (d/du, d/dv) of ``x`` ``[B, 1, H, W]`` by central differences; zero on
    the one-pixel border."""
    gu = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0))
    gv = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1))
    return torch.cat([gu, gv], dim=1)


def surface_mask(normal: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` bool: labeled, tilted pixels whose four neighbours lie on the same surface."""
    unit = F.normalize(normal.float(), dim=1, eps=_EPS)
    valid = normal.abs().sum(1) > 0
    inside = valid.clone()
    for dim, step in ((2, 1), (2, -1), (3, 1), (3, -1)):
        neighbour = torch.roll(unit, shifts=step, dims=dim)
        inside &= (unit * neighbour).sum(1) > SAME_SURFACE_COS
        inside &= torch.roll(valid, shifts=step, dims=dim - 1)
    inside[:, [0, -1], :] = False  # roll wraps around: the border has no true neighbours
    inside[:, :, [0, -1]] = False
    return inside & (unit[:, :2].norm(dim=1) >= MIN_TILT)


def normal_axis_sign(depth: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """+1 or -1 (a 0-dim tensor: no host read): the sign of ``sum(grad(1/z) . (n_x, n_y))`` over
    ``mask`` where both neighbours' depth is labeled (over all ranks under DDP), i.e. which way
    the format's normal axes point relative to the image axes."""
    labeled = (depth > 0).float()
    known = mask & (central_gradient(labeled).abs().sum(1) == 0) & (depth[:, 0] > 0)
    inverse = labeled / depth.float().clamp_min(_EPS)
    agree = (central_gradient(inverse) * normal[:, :2].float()).sum(1)
    # Summed over the ranks: every rank takes the single-process batch's sign.
    total = all_reduce_sum(torch.where(known, agree, torch.zeros_like(agree)).sum())
    return torch.where(total < 0, -1.0, 1.0).to(agree)


def depth_normal_terms(
    depth_pred: torch.Tensor,
    normal_target: torch.Tensor,
    depth_target: torch.Tensor,
    labeled: torch.Tensor,
) -> torch.Tensor:
    """Per-pixel ``1 - cos(grad(1/z_pred), s (n_x, n_y))`` ``[B, 1, H, W]`` (the depth loss's
    shape), zero outside the surface mask and on samples without both labels (``labeled``
    ``[B]`` bool)."""
    mask = surface_mask(normal_target) & labeled.view(-1, 1, 1)
    sign = normal_axis_sign(depth_target, normal_target, mask)
    grad = central_gradient(1.0 / depth_pred.float().clamp_min(_EPS))
    target = sign * normal_target[:, :2].float()
    cos = (grad * target).sum(1) / (grad.norm(dim=1) * target.norm(dim=1) + _EPS)
    return torch.where(mask, 1.0 - cos, torch.zeros_like(cos)).unsqueeze(1)
