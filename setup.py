"""Installs tag_jax (JAX/Flax task grouping) and selection (framework-free network selection)."""

import setuptools

# Only for preparing CelebA's ArrayRecord files (data/prepare_celeba.md): the TFDS builder.
PREPARE = ["tensorflow-cpu>=2.16", "importlib_resources"]

setuptools.setup(
    name="tag_jax",
    version="0.1.0",
    description=(
        "Which tasks should be trained together? TAG, CS, HOA and DMTG task grouping in JAX/Flax."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["tag_jax", "tag_jax.*", "selection", "selection.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",  # reads prepared CelebA (ArrayRecord) without TensorFlow
        "ml-collections>=1.0",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.3",  # ships the 'digits' dataset's files (no download)
        # TensorBoard's event-file format and viewer; tag_jax writes the files without TensorFlow.
        "tensorboard>=2.16",
        "grain>=0.2.13",  # CelebA's input pipeline
        "pillow",  # PNG images in the event files; TFDS decodes CelebA JPEGs with it
        "absl-py",
        "matplotlib>=3.7",
    ],
    extras_require={
        "prepare": PREPARE,
        # PREPARE: the CelebA tests prepare a tiny celeb_a and compare with tf.image.resize.
        "test": PREPARE
        + [
            "pytest>=7",
            "pytest-xdist>=3.5",
            "hypothesis>=6",
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6",
            "ruff>=0.6",  # lint and format check (pyproject.toml)
        ],
    },
)
