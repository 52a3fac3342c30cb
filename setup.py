from setuptools import find_packages, setup

setup(
    name="vcm_d2",
    version="0.1.0",
    description="Video Coding for Machines as a Detectron2 plugin (CDRE, TransVFC)",
    packages=find_packages(include=["vcm_d2", "vcm_d2.*"]),
    python_requires=">=3.9",
    # What vcm_d2 imports, with the lower bounds of requirements.txt and none of its exact pins
    # (`pip install -e .` into an existing detectron2 environment keeps that environment's
    # torch build). The pinned set is requirements.txt, installed by tools/install_deps.sh.
    # Not declared:
    # * detectron2: not on PyPI under its name (install_deps.sh builds it; or bring your own);
    # * OpenCV: only detectron2's Visualizer (report figures) imports it, and a detectron2
    #   environment usually has it already as opencv-python, which a headless requirement
    #   would duplicate;
    # * torch-geometric, scipy: needed by CompressAI and bjontegaard, which declare them.
    install_requires=[
        "torch",
        "torchvision",  # torchvision.ops.StochasticDepth in the CDRE Swin wrapper
        "numpy",
        "Pillow>=7.1",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.7",
        "tabulate",
        "tqdm>4.29.0",
        "matplotlib",
        "av>=14",
        "imageio-ffmpeg>=0.5",
        "compressai>=1.2.6",
        "bjontegaard>=1.3.0",
    ],
)
