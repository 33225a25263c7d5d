"""Prepares TFDS `celeb_a` as ArrayRecord files from the original CelebA files, offline.

  python -m tag_jax.data.prepare_celeba --manual_dir DIR [--data_dir DATA_DIR]

TFDS's celeb_a builder has no manual-download step: it downloads its five files
from Google Drive, which refuses most users (quota). But its download manager
takes a file from `DownloadConfig(manual_dir=...)` instead of downloading it
when the name matches the builder's checksum list, and still verifies the size
and sha256. So: download the five original files yourself (data/prepare_celeba.md),
put them under their original names in DIR, run this. Preparing needs
TensorFlow (TFDS serializes the examples with it) and importlib_resources
(TFDS reads its checksum list with it but does not declare it); reading the
prepared data needs neither.
"""

import argparse
import os
import sys

import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import download_manager

from tag_jax.data import celeba
from tag_jax.errors import UserError

DOC = "data/prepare_celeba.md"


def original_files() -> dict[str, int]:
    """Original file name -> size in bytes, from the celeb_a builder's checksum list."""
    try:
        url_infos = tfds.builder_cls(celeba.TFDS_NAME).url_infos
    except ModuleNotFoundError as e:
        raise UserError(
            f"preparing CelebA needs the Python module {e.name!r}, which TFDS uses without "
            f"installing it: pip install '.[prepare]' (or pip install {e.name})"
        ) from e
    return {info.filename: int(info.size) for info in url_infos.values()}


def check_manual_dir(manual_dir: str) -> None:
    """UserError naming every original file missing from `manual_dir` or of the wrong size."""
    problems = []
    for name, size in sorted(original_files().items()):
        path = os.path.join(manual_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{name} has {os.path.getsize(path)} bytes, expected {size}")
    if problems:
        raise UserError(f"--manual_dir {manual_dir}: {'; '.join(problems)} (see {DOC})")


def prepare(manual_dir: str, data_dir: str = "") -> str:
    """Writes celeb_a as ArrayRecord under `data_dir` ('' = TFDS default); returns its directory."""
    check_manual_dir(manual_dir)
    builder = tfds.builder(celeba.TFDS_NAME, data_dir=data_dir or None)
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
    except download_manager.NonMatchingChecksumError as e:
        raise UserError(
            f"a file in --manual_dir {manual_dir} has the right size but not the original "
            f"content (sha256 differs); download it again (see {DOC}): "
            f"{str(e).splitlines()[0]}"
        ) from e
    return os.fspath(builder.data_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tag_jax.data.prepare_celeba",
        description=f"Prepare CelebA (TFDS celeb_a) as ArrayRecord from the originals; see {DOC}.",
    )
    parser.add_argument(
        "--manual_dir", required=True, help="directory holding the five original CelebA files"
    )
    parser.add_argument(
        "--data_dir",
        default="",
        help="TFDS data dir to write to (default: TFDS's); train with "
        "config.dataset.data_dir set to the same",
    )
    args = parser.parse_args(argv)
    try:
        path = prepare(args.manual_dir, args.data_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"CelebA is prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
