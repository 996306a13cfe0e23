from pathlib import Path

from setuptools import find_packages, setup

# onnxscript is pre-1.0 and changes its exporter between minor series: the tested one only
EXPORT = ["onnx>=1.16", "onnxscript>=0.7,<0.8", "onnxruntime>=1.18"]

setup(
    name="cvmtl",
    version="0.1.0",
    description="Multi-task dense prediction (segmentation, depth, normals) on timm backbones",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cvmtl", "cvmtl.*"]),
    package_data={"cvmtl.configs": ["*.yaml", "sweeps/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",  # nn.utils.get_total_norm / clip_grads_with_norm_
        "torchvision",
        "timm>=1.0",
        # 2.0.x is the last MIT-licensed series (later releases moved to a copyleft licence)
        "albumentations>=2.0,<2.1",
        "opencv-python-headless>=4.8",
        "numpy",
        "PyYAML",
        "h5py",
        "scipy",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "safetensors",
        "pillow",
        "optuna>=4.0",  # cvmtl sweep (JournalFileBackend)
    ],
    extras_require={
        # ruff pinned to a minor series: a new release's rules must not fail CI on old code
        # test references only: pyedgeeval (BSDS correspondPixels, a C++ build of ~35 s at
        # install) for the exact edge matcher, scikit-image's thin for cvmtl.metrics.thinning,
        # segmentation_models_pytorch's FPN for the single-task segmentation comparison
        "dev": [
            "pytest",
            "pytest-timeout",
            "ruff~=0.17.6",
            "pyedgeeval==0.2.8",
            "scikit-image",
            "segmentation-models-pytorch==0.6.0",
        ]
        + EXPORT,
        "export": EXPORT,
    },
    entry_points={"console_scripts": ["cvmtl=cvmtl.cli:main"]},
)
