"""mgjax: a JAX/Flax training stack for Movie Gen-style media foundation models."""

from setuptools import find_packages, setup

# notebooks/: plots and a kernel. Unpinned so that Colab keeps its own, preinstalled ones.
NOTEBOOK = ["matplotlib", "ipykernel"]

setup(
    name="mgjax",
    version="0.1.0",
    description="JAX/Flax training stack for Movie Gen-style video, image and audio models.",
    packages=find_packages(include=["mgjax", "mgjax.*"]),
    python_requires=">=3.11",
    install_requires=[
        # jax 0.10.x is the newest release for Python 3.11; newer jax on 3.12 works too.
        "jax>=0.10.2",
        "flax==0.12.8",  # Linen + logical partitioning APIs move between releases
        "optax>=0.2.8",
        "orbax-checkpoint==0.12.8",  # CheckpointManager / args API moves between releases
        "grain==0.2.18",
        "array-record>=0.8",  # ArrayRecord shards of precomputed latents
        "tensorflow-datasets>=4.9.9",  # TFDS sets via tfds.data_source; no TensorFlow needed
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "einops>=0.8",
        "numpy>=1.26",
        "av>=14.0",  # PyAV: H.264 decode/encode
        "pillow>=10.0",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "tqdm>=4.66",
        "transformers>=5.0",  # tokenizers of the text encoders; no PyTorch needed
        "safetensors>=0.4",  # Hugging Face weight files, read as numpy
    ],
    extras_require={
        # torch: the reference implementations the text-encoder parity tests compare to.
        # Pinned: a range would let pip pick a newer, multi-GB CUDA build.
        # jax[tpu]: the libtpu matching whichever jax resolves (0.0.42.x for jax 0.10.2;
        # ~210 MB wheel, ~680 MB installed), for the ahead-of-time TPU v5p compile test of
        # the Pallas TPU attention (skipped without it). Unused with JAX_PLATFORMS=cpu.
        # nbclient, nbformat: the test that runs notebooks/ headless.
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "scipy>=1.11",
            "torch==2.13.0",
            "jax[tpu]",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "pyink==26.5.1",  # formatter and linter (pyproject.toml), pinned: their output moves
            "ruff==0.17.6",
        ]
        + NOTEBOOK,
        # Running notebooks/inspect_checkpoint.ipynb in a Jupyter or Colab.
        "notebook": NOTEBOOK,
        # Ahead-of-time compilation for TPU topologies on a CPU machine: libtpu matching jax.
        "tpu": ["jax[tpu]"],
    },
)
