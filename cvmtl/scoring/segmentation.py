"""Semantic segmentation metric: one confusion matrix over the whole split."""

from __future__ import annotations

import torch

from cvmtl.scoring._common import accumulate, count_bins, reduced

NO_PREDICTION = -1  # the label of a pixel whose logits are not all finite (see class_labels)


def top_class(logits: torch.Tensor) -> torch.Tensor:
    """Class ids [B, H, W] of logits [B, C, H, W]: argmax's index (the first maximum), by
    ``max(dim=1).indices``, ~10x faster than ``argmax`` on the CPU."""
    return logits.max(dim=1).indices


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class ids [B, H, W] (int64) of logits [B, C, H, W]: the first maximum (argmax's rule), and
    :data:`NO_PREDICTION` where a pixel's logits are not all finite (NaN, +-inf, or so large that
    their float32 sum overflows), whatever argmax would say.

    Evaluation decides labels once, in the prediction step (``TaskSpec.decide``); the metric then
    only counts."""
    bad = ~torch.isfinite(logits.sum(dim=1, dtype=torch.float32))  # finite iff every logit is
    return top_class(logits).masked_fill_(bad, NO_PREDICTION)


def _clamped_int32(labels: torch.Tensor, c: int) -> torch.Tensor:
    """``labels`` clamped to ``-1..c``, as int32 (clamped first: no large label wraps around)."""
    if not labels.dtype.is_signed:  # uint8: -1 is not representable, so no clamp to it there
        labels = labels.int()
    return labels.clamp(-1, c).int()


class SegMetric:
    """Streaming mIoU / pixel accuracy from a ``num_classes`` x ``num_classes`` confusion matrix.

    Pixels whose target is ``ignore_index`` (or otherwise outside ``0..C-1``) do not count. A
    predicted label outside ``0..C-1`` counts as wrong for its pixel (it is kept in an extra
    column rather than wrapped into another class). ``compute()`` all-reduces under DDP.

    Predictions are logits [B, C, H, W] (decided by :func:`class_labels`) or labels [B, H, W]. A
    pixel with no prediction (a negative label such as :data:`NO_PREDICTION`: its logits were not
    all finite; or a float label that is NaN / inf) is never correct either, and ``nonfinite``
    counts those among the scored pixels (a float).

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
        # Rows = target class; columns = predicted class, then "label out of range", then "no
        # prediction" (non-finite). One tensor: one all_reduce.
        c = self.num_classes
        self._cm = torch.zeros(c, c + 2, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: logits [B,C,H,W] or labels [B,H,W]; target: labels [B,H,W]."""
        c = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != c:
                raise ValueError(f"SegMetric: logits have {pred.shape[1]} channels, expected {c}")
            pred = class_labels(pred)
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(
                "SegMetric.update: want logits [B,C,H,W] or labels [B,H,W] and target [B,H,W], "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if pred.is_floating_point():  # NaN has no integer value: it becomes "no prediction"
            pred = pred.masked_fill(~torch.isfinite(pred), NO_PREDICTION)
        # Row t + 1, column p + 1 of a [C + 2, C + 2] table counts target t, prediction p, both
        # clamped to -1..C: row 0 or C + 1 is a target outside 0..C-1 (dropped); column 0 a
        # negative label (no prediction), column C + 1 a label >= C (wrong, never wrapped onto
        # another class). Clamps, not boolean indexing: no host sync on CUDA, and few passes
        # over the pixels, in int32 (half the memory traffic of int64).
        row = _clamped_int32(target.to(pred.device), c)
        col = _clamped_int32(pred, c)
        counts = count_bins(torch.add(col, row, alpha=c + 2).add_(c + 3), (c + 2) * (c + 2))
        table = counts.view(c + 2, c + 2)[1 : c + 1]
        # columns of the state: the classes, then "label >= C", then "no prediction"
        self._cm = accumulate(self._cm, table.roll(-1, dims=1))

    @property
    def confusion(self) -> torch.Tensor:
        """The local (not reduced) confusion matrix [C, C]: rows target, columns prediction."""
        return self._cm[:, : self.num_classes]

    def compute(self) -> dict[str, float | list[float | None]]:
        c = self.num_classes
        cm = reduced(self._cm).cpu().double()
        tp = cm.diagonal()  # [C]: a [C, C+2] matrix has C diagonal entries
        per_target = cm.sum(dim=1)  # tp + fn (includes invalid and missing predictions)
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
            "nonfinite": float(cm[:, c + 1].sum()),
        }
