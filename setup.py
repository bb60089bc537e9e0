from setuptools import find_packages, setup

setup(
    name="irn-engine",
    version="0.1.0",
    description="A profiling-focused training engine for the Invertible Rescaling Network, with fused Triton kernels",
    python_requires=">=3.11",
    packages=find_packages(include=["engine*", "kernels*", "profiling*"]),
    install_requires=[
        "torch>=2.11,<2.15",
        "FrEIA==0.2",
        "triton>=3.6,<3.10; platform_system=='Linux'",
        "numpy",
        "rich",
        "nvidia-ml-py",
        "py-spy",
        # the embedded default data set: natural photographs shipped inside the wheel, plus image decoding
        "scikit-image",
        # reading users' images, writing 8-bit PNGs and captioned grids
        "pillow",
        # report figures (--plot)
        "matplotlib",
    ],
    extras_require={"test": ["pytest"]},
)
