"""Balancers: ``build_balancer(name, tasks, **hparams)`` (see docs/architecture.md, "Balancers")."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

from cvmtl.balancers.base import GradientBalancer, LossBalancer

# name -> "module:Class"; imported on demand so that one method's optional dependency (or a
# missing module) never breaks the others.
BALANCERS: dict[str, str] = {
    "fixed": "cvmtl.balancers.loss_level:Fixed",
    "uw": "cvmtl.balancers.loss_level:UW",
    "dwa": "cvmtl.balancers.loss_level:DWA",
    "rlw": "cvmtl.balancers.loss_level:RLW",
    "gls": "cvmtl.balancers.loss_level:GLS",
    "famo": "cvmtl.balancers.loss_level:FAMO",
    "stch": "cvmtl.balancers.stch:STCH",
    "mgda": "cvmtl.balancers.gradient.mgda:MGDA",
    "pcgrad": "cvmtl.balancers.gradient.pcgrad:PCGrad",
    "cagrad": "cvmtl.balancers.gradient.cagrad:CAGrad",
    "imtl": "cvmtl.balancers.gradient.imtl:IMTL",
    "nash_mtl": "cvmtl.balancers.gradient.nash:NashMTL",
    "gradnorm": "cvmtl.balancers.gradient.gradnorm:GradNorm",
    "graddrop": "cvmtl.balancers.gradient.graddrop:GradDrop",
    "gradvac": "cvmtl.balancers.gradient.gradvac:GradVac",
    "aligned_mtl": "cvmtl.balancers.gradient.aligned:AlignedMTL",
    "db_mtl": "cvmtl.balancers.gradient.dbmtl:DBMTL",
    "fairgrad": "cvmtl.balancers.gradient.fairgrad:FairGrad",
    "excessmtl": "cvmtl.balancers.gradient.excessmtl:ExcessMTL",
    "rgw": "cvmtl.balancers.gradient.rgw:RGW",
    "moco": "cvmtl.balancers.gradient.moco:MoCo",
    "modo": "cvmtl.balancers.gradient.modo:MoDo",
    "sdmgrad": "cvmtl.balancers.gradient.sdmgrad:SDMGrad",
    "upgrad": "cvmtl.balancers.gradient.upgrad:UPGrad",
    "dualproj": "cvmtl.balancers.gradient.dualproj:DualProj",
    "config": "cvmtl.balancers.gradient.conflict_free:ConFIG",
}

__all__ = [
    "BALANCERS",
    "GradientBalancer",
    "LossBalancer",
    "balancer_class",
    "build_balancer",
    "mtl_after_step",
    "mtl_backward",
]


def __getattr__(name: str):
    if name in ("mtl_backward", "mtl_after_step"):  # lazy: machinery imports this package first
        from cvmtl.balancers import api

        return getattr(api, name)
    raise AttributeError(f"module 'cvmtl.balancers' has no attribute {name!r}")


def balancer_class(name: str) -> type:
    """The class registered under ``name``; an unknown name is a ValueError listing the options."""
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r} (available: {', '.join(BALANCERS)})")
    module, cls = BALANCERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_balancer(name: str, tasks: Sequence[str], **hparams) -> LossBalancer | GradientBalancer:
    """Build the balancer ``name`` for ``tasks``; unknown names and hparams are ValueErrors."""
    cls = balancer_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:  # classes with **hparams check their own names
        known = [p for p in params if p not in ("self", "tasks")]
        unknown = sorted(set(hparams) - set(known))
        if unknown:
            raise ValueError(
                f"balancer {name!r}: unknown hyper-parameter(s) {', '.join(unknown)} "
                f"(accepted: {', '.join(known) or 'none'})"
            )
    try:
        return cls(list(tasks), **hparams)
    except TypeError as err:  # e.g. an unexpected keyword deeper down
        raise ValueError(f"balancer {name!r}: {err}") from None
