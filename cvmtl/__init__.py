"""cvmtl: multi-task dense prediction (segmentation, depth, surface normals) on timm backbones."""

from cvmtl.config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Predictor",
    "__version__",
    "build_balancer",
    "build_model",
    "load_config",
    "mtl_after_step",
    "mtl_backward",
]


def __getattr__(name: str):
    # Lazy imports keep `import cvmtl` light (no timm / albumentations until they are needed).
    if name == "build_model":
        from cvmtl.models.build import build_model

        return build_model
    if name == "build_balancer":
        from cvmtl.balancers import build_balancer

        return build_balancer
    if name in ("mtl_backward", "mtl_after_step"):
        from cvmtl.balancers import api

        return getattr(api, name)
    if name == "Predictor":
        from cvmtl.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'cvmtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names, lazy ones included (not the submodules that imports attach)
    return sorted(__all__)
