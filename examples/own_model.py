"""A model of your own (torchvision's LR-ASPP MobileNetV3) with a second, depth head, trained a
few steps in a plain loop with a gradient balancer through cvmtl's public API.

    python examples/own_model.py [--steps 3] [--balancer upgrad]
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

import cvmtl

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--balancer", default="upgrad")
args = parser.parse_args()

torch.manual_seed(0)
net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
depth_head = nn.Conv2d(960, 1, 1)  # on the backbone's "high" (stride-16) map
balancer = cvmtl.build_balancer(args.balancer, tasks=["seg", "depth"])
# a balancer's own parameters (uw's log-variances) train with the model
params = [*net.parameters(), *depth_head.parameters(), *balancer.parameters()]
optimizer = torch.optim.AdamW(params, lr=1e-3)

for step in range(args.steps):
    image = torch.randn(2, 3, 64, 64)
    labels, depth = torch.randint(0, 5, (2, 64, 64)), torch.rand(2, 1, 64, 64)
    feats = net.backbone(image)  # {"low": stride 8, "high": stride 16}: what the tasks share
    seg = F.interpolate(net.classifier(feats), size=image.shape[-2:], mode="bilinear")
    pred = F.interpolate(depth_head(feats["high"]), size=image.shape[-2:], mode="bilinear")
    losses = {"seg": F.cross_entropy(seg, labels), "depth": F.l1_loss(pred, depth)}
    weights = cvmtl.mtl_backward(
        losses,
        balancer,
        shared_params=net.backbone.parameters(),
        features=[feats["low"], feats["high"]],
    )
    optimizer.step()
    optimizer.zero_grad()
    # stateful balancers move on (famo wants this batch's losses recomputed after the step)
    cvmtl.mtl_after_step(losses, balancer)
    shown = ", ".join(f"{t} {v.item():.3f} (w {weights[t]:.2f})" for t, v in losses.items())
    print(f"step {step}: {shown}")
