"""Semantic segmentation metric: one confusion matrix over the whole split."""

from __future__ import annotations

import torch

from cvmtl.metrics._common import accumulate, count_bins, reduced


class SegMetric:
    """Streaming mIoU / pixel accuracy from a ``num_classes`` x ``num_classes`` confusion matrix.

    Pixels whose target is ``ignore_index`` (or otherwise outside ``0..C-1``) do not count. A
    predicted label outside ``0..C-1`` counts as wrong for its pixel (it is kept in an extra
    column rather than wrapped into another class). ``compute()`` all-reduces under DDP.

    A pixel whose logits are not all finite (NaN, +-inf; also logits so large that their float32
    sum overflows) or whose float label is NaN / inf is a prediction of its own, never correct:
    it goes to the invalid-prediction column, whatever argmax would say. ``nonfinite`` counts
    those among the scored pixels (a float).

    ``iou_per_class`` holds one percent per class, in class order; a class absent from both the
    targets and the predictions has no IoU: its entry is ``None`` (JSON-safe, unlike NaN) and it
    is left out of ``miou``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"SegMetric: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        # Rows = target class, columns = predicted class (+1 column: "invalid prediction"); one
        # more entry at the end counts non-finite predictions (one vector: one all_reduce).
        self._cm = torch.zeros(self.num_classes * (self.num_classes + 1) + 1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: logits [B,C,H,W] or labels [B,H,W]; target: labels [B,H,W]."""
        c = self.num_classes
        from_logits = pred.dim() == 4
        if from_logits:
            if pred.shape[1] != c:
                raise ValueError(f"SegMetric: logits have {pred.shape[1]} channels, expected {c}")
            # The sum over classes is finite iff every logit is (a cheap reduction over dim 1).
            bad = ~torch.isfinite(pred.sum(dim=1, dtype=torch.float32))
            pred = pred.max(dim=1).indices  # same as argmax (first maximum), faster on the CPU
        else:
            bad = ~torch.isfinite(pred) if pred.is_floating_point() else None
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(
                "SegMetric.update: want logits [B,C,H,W] or labels [B,H,W] and target [B,H,W], "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        target = target.to(device=pred.device, dtype=torch.int64)
        if bad is not None:
            pred = pred.masked_fill(bad, c)  # before .long(): NaN has no integer value
        pred = pred.long()
        if not from_logits:  # a label out of range is wrong, never wrapped onto another class
            pred = torch.where((pred >= 0) & (pred < c), pred, c)
        # Row t + 1 of a [C + 2, C + 1] table counts target t: a target outside 0..C-1 is
        # clamped into row 0 or row C + 1, both dropped. Masks by index, not boolean indexing:
        # no host sync on CUDA, and three integer passes before the count.
        # (pred is a fresh tensor here, so the in-place add leaves the caller's alone)
        row = target.add(1).clamp_(0, c + 1)
        nonfinite = row.new_zeros(1)
        if bad is not None:  # counted on scored pixels only (rows 1..C)
            nonfinite = (bad & (row > 0) & (row <= c)).sum().view(1)
        counts = count_bins(pred.add_(row, alpha=c + 1), (c + 2) * (c + 1))
        self._cm = accumulate(self._cm, torch.cat([counts[c + 1 : (c + 1) * (c + 1)], nonfinite]))

    @property
    def confusion(self) -> torch.Tensor:
        """The local (not reduced) confusion matrix [C, C]: rows target, columns prediction."""
        c = self.num_classes
        return self._cm[:-1].view(c, c + 1)[:, :c]

    def compute(self) -> dict[str, float | list[float | None]]:
        c = self.num_classes
        state = reduced(self._cm).cpu()
        cm = state[:-1].view(c, c + 1).double()
        tp = cm.diagonal()  # [C]: a [C, C+1] matrix has C diagonal entries
        per_target = cm.sum(dim=1)  # tp + fn (includes invalid predictions)
        per_pred = cm[:, :c].sum(dim=0)  # tp + fp
        union = per_target + per_pred - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp)) * 100
        total = per_target.sum().item()
        miou = iou[present].mean().item() if present.any() else float("nan")
        pixel_acc = tp.sum().item() / total * 100 if total > 0 else float("nan")
        per_class = [float(v) if ok else None for v, ok in zip(iou.tolist(), present.tolist())]
        return {
            "miou": float(miou),
            "pixel_acc": float(pixel_acc),
            "iou_per_class": per_class,
            "nonfinite": float(state[-1]),
        }
