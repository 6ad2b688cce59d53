"""Shared session-scoped fixtures: tiny open_clip models and a digits PNG tree (see fixtures_tiny.py)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU interpreter; it must be chosen before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fixtures_tiny import tiny_model_config, write_digits_png, write_local_dir


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch):
    """No test writes to the user's ~/.cache/iimm: the default store is a fresh temporary folder."""
    monkeypatch.setenv("IIMM_HOME", str(tmp_path_factory.mktemp("iimm-home")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is fastest, and far faster on a busy machine (no spinning workers)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny CLIP ViT saved as an open_clip folder; use it as f"local-dir:{tiny_model_dir}"."""
    return write_local_dir(tmp_path_factory.mktemp("tiny-clip"), tiny_model_config("clip"))


@pytest.fixture(scope="session")
def tiny_model_dir_factory(tmp_path_factory):
    """make(family="clip"|"siglip"|"coca"|"eva", seed=0) -> local-dir path, built once per session."""
    built = {}

    def make(family: str = "clip", seed: int = 0):
        if (family, seed) not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}-{seed}")
            built[family, seed] = write_local_dir(folder, tiny_model_config(family), seed=seed)
        return built[family, seed]

    return make


@pytest.fixture(scope="session")
def digits_png_dir(tmp_path_factory):
    """A class-per-folder PNG tree of sklearn digits: 10 classes × 20 images, 32×32 px (do not modify)."""
    return write_digits_png(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One small local Ray for every `ray` test of the session (starts in a few seconds): 2 CPUs, no dashboard,
    a 200 MB object store, its files under pytest's temporary folder (nothing written to the home folder)."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")), runtime_env={"env_vars": _ray_worker_env()})
    yield ray
    ray.shutdown()


def _ray_worker_env() -> dict:
    """Workers import iimm the way this session does (a source tree on PYTHONPATH) and run Triton on the CPU."""
    keep = ("PYTHONPATH", "TRITON_INTERPRET", "RAY_AUTH_MODE")
    return {k: os.environ[k] for k in keep if k in os.environ}
