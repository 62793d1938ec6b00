"""The test session writes nothing outside its temporary folders: the Hugging Face caches point into a session
folder (tests/conftest.py), and a dataset loaded without a cache folder lands there, not in ~/.cache."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub
from conftest import REAL_DATASETS_CACHE, REAL_HF_HOME, SESSION_CACHE

from hf_distill.data import load_lm_dataset


def _inside(path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_hugging_face_caches_point_into_the_session_folder():
    caches = {
        "datasets.config.HF_CACHE_HOME": datasets.config.HF_CACHE_HOME,
        "datasets.config.HF_DATASETS_CACHE": datasets.config.HF_DATASETS_CACHE,
        "datasets.config.HF_MODULES_CACHE": datasets.config.HF_MODULES_CACHE,
        "datasets.config.DOWNLOADED_DATASETS_PATH": datasets.config.DOWNLOADED_DATASETS_PATH,
        "huggingface_hub.constants.HF_HOME": huggingface_hub.constants.HF_HOME,
        "huggingface_hub.constants.HF_HUB_CACHE": huggingface_hub.constants.HF_HUB_CACHE,
        "huggingface_hub.constants.HF_ASSETS_CACHE": huggingface_hub.constants.HF_ASSETS_CACHE,
    }
    outside = {name: str(path) for name, path in caches.items() if not _inside(path, SESSION_CACHE)}
    assert not outside, f"caches outside the session folder {SESSION_CACHE}: {outside}"
    assert not _inside(SESSION_CACHE, REAL_HF_HOME)


def test_a_dataset_loaded_without_a_cache_folder_stays_in_the_session_folder(tmp_path):
    """The causal-LM job loads its text files with cache_dir=None; that cache (and its lock file) used to land in
    ~/.cache/huggingface/datasets."""
    path = tmp_path / "train.txt"
    path.write_text(f"a sentence only this test writes: {tmp_path.name}\n")
    ds = load_lm_dataset(train_file=str(path))
    assert ds.cache_files and all(_inside(f["filename"], SESSION_CACHE) for f in ds.cache_files)
    # the builder's folder for this file, e.g. .../datasets/text/default-0123abcd/0.0.0/<hash>/text-train.arrow
    config_id = next(part for part in Path(ds.cache_files[0]["filename"]).parts if part.startswith("default-"))
    real = REAL_DATASETS_CACHE
    leaked = [p for p in (real.glob(f"*{config_id}*") if real.is_dir() else []) if p.exists()]
    leaked += [p for p in [real / "text" / config_id] if p.exists()]
    assert not leaked, f"the dataset's cache was written into the real cache {real}: {leaked}"
