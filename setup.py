from setuptools import find_packages, setup

setup(
    name="vcm_d2",
    version="0.1.0",
    description="Video Coding for Machines as a Detectron2 plugin (CDRE, TransVFC)",
    packages=find_packages(include=["vcm_d2", "vcm_d2.*"]),
    python_requires=">=3.9",
    # Runtime requirements are pinned in requirements.txt and installed by
    # tools/install_deps.sh (detectron2 is not on PyPI under its own name).
    install_requires=[],
)
