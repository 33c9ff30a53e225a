"""awn_jax: Any-Width Networks in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="awn_jax",
    version="0.1.0",
    description="Any-Width Networks (and S-Net / US-Net baselines) in JAX and Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["awn_jax", "awn_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.5",
        "grain>=0.2.12",  # the input pipeline (awn_jax.input_pipeline)
        "importlib_resources",
        "ml-collections>=1.0",
        "chex>=0.1.89",
        "numpy>=1.26",
        "pillow>=10",
        "matplotlib>=3.8",
        "absl-py>=2.1",
        "tensorboardX>=2.6",
        "flatbuffers>=24",  # jax.export's serialization (python -m awn_jax.export --format=stablehlo)
    ],
    # The notebooks run in the tests (nbclient on an ipykernel), so they cannot rot.
    # pytest-xdist: the suite runs on 2 processes (compilation is single-threaded). pytest < 9.2:
    # on 9.2, xdist's --dist loadgroup (3.8, the newest) groups nothing (pytest-dev/pytest-xdist#1386), and
    # each worker would build the suite's shared fixtures (tests/test_conftest.py checks). Lift
    # the pin once a pytest-xdist release fixes that issue, and revisit that test with it.
    # bench: the PyTorch side of python -m awn_jax.bench (a CPU build where the index has one:
    # pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu).
    extras_require={"bench": ["torch==2.13.0"],
                    "test": ["pytest>=8,<9.2", "pytest-xdist>=3.5", "hypothesis>=6.100", "nbclient>=0.10",
                             "nbformat>=5.10", "ipykernel>=6.29"]},
)
