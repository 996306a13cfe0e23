"""Export a cvmtl checkpoint to ONNX, torch.export (.pt2) or TorchScript, verified against PyTorch.

The exported graph takes ``image`` float32 [B, 3, H, W], normalized with the checkpoint's
``data.mean`` / ``data.std`` (as ``model(image)`` does), and returns the model's output of every
task (the config's task list, in its order; ONNX outputs are named after the tasks), e.g. ``seg``
logits [B, C, H, W], ``depth`` metres [B, 1, H, W], ``normal`` unit vectors [B, 3, H, W].
Batch, height and width are dynamic where the backbone allows (CNNs do); any H, W works because
the graph pads to the backbone's stride multiple and crops back, as the model does.

The model is exported as it is: its forward has no Python branch on sizes and no ``int()`` of a
size (see :mod:`cvmtl.models`), which a tracer would freeze to the example's size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMATS = ("onnx", "export", "torchscript")
SUFFIX = {"onnx": ".onnx", "export": ".pt2", "torchscript": ".ts"}
ONNX_HINT = "onnxruntime is missing: pip install cvmtl[export]  (or: pip install onnx onnxruntime)"


class ExportModule(nn.Module):
    """``image -> (output of each task)`` (the model's tasks, in the config's order): the model
    itself, whose forward is trace-friendly, with its dict output turned into a tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.tasks: list[str] = list(model.tasks)
        self.eval()  # a fresh wrapper starts in training mode

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[t] for t in self.tasks)


def export_model(
    model: nn.Module,
    fmt: str,
    out: str | Path,
    size: tuple[int, int],
    dynamic: bool = True,
    opset: int | None = None,
) -> Path:
    """Write ``model`` as ``fmt`` (onnx | export | torchscript) traced at ``size`` (H, W);
    ``dynamic`` makes batch, height and width free (ONNX dims named batch / height / width)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {'|'.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if fmt == "export" and out.suffix != ".pt2":
        raise ValueError(
            f"a torch.export archive must be named *.pt2 (torch.export.load), got {out}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportModule(model.float().cpu().eval())
    # batch 2: torch.export specializes a dimension whose example is 1
    example = torch.randn(2 if dynamic else 1, 3, *size)
    dims = None
    if dynamic:
        from torch.export import Dim

        dims = {"image": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    with torch.no_grad():
        if fmt == "onnx":
            _export_onnx(module, example, out, dims, opset)
        elif fmt == "export":
            program = torch.export.export(module, (example,), dynamic_shapes=dims)
            torch.export.save(program, out)
        else:
            # sizes are traced as tensors, so the TorchScript graph stays size-generic
            traced = torch.jit.trace(module, (example,), check_trace=False)
            torch.jit.save(traced, str(out))
    return out


def _export_onnx(
    module: ExportModule, example: torch.Tensor, out: Path, dims: Any, opset: int | None
) -> None:
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1.5 * 2**30
    torch.onnx.export(
        module, (example,), str(out), dynamo=True, input_names=["image"],
        output_names=module.tasks, dynamic_shapes=dims, opset_version=opset,
        external_data=big, verbose=False,
    )  # fmt: skip
    if dims is not None and not big:
        _name_dims(out)


def _name_dims(path: Path) -> None:
    """Rename the exporter's symbolic dims (s0, s17, ...) of the image after what they are."""
    import onnx

    proto = onnx.load(str(path))
    image = proto.graph.input[0].type.tensor_type.shape.dim
    names = {image[i].dim_param: n for i, n in ((0, "batch"), (2, "height"), (3, "width"))}
    for value in list(proto.graph.input) + list(proto.graph.output):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]
    onnx.save(proto, str(path))


def load_exported(path: str | Path, fmt: str) -> Any:
    """A callable ``image (numpy or torch [B,3,H,W]) -> list of numpy outputs``."""
    path = Path(path)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(ONNX_HINT) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.asarray(x, np.float32)})
    if fmt == "export":
        module = torch.export.load(path).module()
    elif fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        raise ValueError(f"format must be one of {'|'.join(FORMATS)}, got {fmt!r}")

    def run(x: Any) -> list[np.ndarray]:
        with torch.no_grad():
            outs = module(torch.as_tensor(np.asarray(x, np.float32)))
        return [o.numpy() for o in outs]

    return run


def verify_export(
    model: nn.Module, path: str | Path, fmt: str, sizes: list[tuple[int, int]], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Max abs difference per output between the export and ``model`` on random inputs of each
    ``(H, W)``: ``{"HxW": {task: diff}}``. A wrong output shape is a ValueError."""
    run = load_exported(path, fmt)
    model = model.float().cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    report: dict[str, dict[str, float]] = {}
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x)
        got = run(x.numpy())
        tasks = list(model.tasks)
        if len(got) != len(tasks):
            raise ValueError(f"{fmt} export: {len(got)} outputs for the tasks {tasks}")
        diffs = {}
        for task, arr in zip(tasks, got):
            want = ref[task].float().numpy()
            if arr.shape != want.shape:
                raise ValueError(
                    f"{fmt} export: {task} at {h}x{w} has shape {arr.shape}, PyTorch {want.shape}"
                )
            diffs[task] = float(np.abs(arr - want).max())
        report[f"{h}x{w}"] = diffs
    return report


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    size: tuple[int, int] | None = None,
    dynamic: bool = True,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load, export and verify (at ``size`` and, when dynamic, a second odd size):
    ``{"path", "format", "seconds", "verify": {"HxW": {task: max abs diff}}}``."""
    from cvmtl.engine.restore import load_model

    model, cfg = load_model(checkpoint, overrides, "cpu")
    h, w = size or tuple(cfg.data.crop)
    t0 = time.perf_counter()
    path = export_model(model, fmt, out, (h, w), dynamic)
    seconds = time.perf_counter() - t0
    sizes = [(h, w)] + ([(h // 2 + 13, w + 27)] if dynamic else [])  # not a stride multiple
    return {
        "path": str(path), "format": fmt, "seconds": seconds, "tasks": ExportModule(model).tasks,
        "verify": verify_export(model, path, fmt, sizes),
    }  # fmt: skip
