"""llm4rec_jax: JAX/Flax trainer for LLM-based multimodal generative recommendation."""

import pathlib

from setuptools import find_packages, setup

README = pathlib.Path(__file__).with_name("README.md")

setup(
    name="llm4rec_jax",
    version="0.1.0",
    description="JAX/Flax trainer for LLM-based, multimodal, generative recommendation "
                "with causal debiasing",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["llm4rec_jax", "llm4rec_jax.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        # Workdirs are epath paths (llm4rec_jax.workdir): local, or gs:// with the "gcs" extra.
        "etils[epath]>=1.7",
        "grain>=0.2.12",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=2.0",
        "pyarrow>=15",
        "tensorflow-datasets>=4.9",
        # TFDS imports it (undeclared) to locate a builder that lives in a package.
        "importlib_resources>=6.0",
        "array_record>=0.5",
        "transformers>=4.40",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "scann>=1.4",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
    ],
    extras_require={
        # A gs://bucket/run workdir read and written in place: epath's GCS backend (gcsfs) and the
        # client Orbax asks about the bucket (both preinstalled in Colab).
        "gcs": ["gcsfs>=2023.1", "google-cloud-storage>=2.0"],
        # Preparing releases larger than one machine's memory (llm4rec_jax.data.prepare).
        "beam": ["apache-beam>=2.60"],
        # torch: the reference the Hugging Face import is checked against (tests/test_hf_reference.py).
        # Pinned to 2.13.0, the release whose CPU-only build (about 190 MB) pip takes from this
        # project's machines' local wheel directory; an unpinned torch resolves to a CUDA build of
        # several GB on Linux.
        "test": ["apache-beam>=2.60", "pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.9",
                 "ipykernel>=6.0", "matplotlib>=3.7", "torch==2.13.0"],
    },
    entry_points={"console_scripts": ["llm4rec=llm4rec_jax.cli:run"]},
)
