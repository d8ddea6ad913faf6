from __future__ import annotations

import pytest

from ft_callbacks import toy


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads can be
    many times slower than one (they spin waiting for each other). Subprocess tests set OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return toy.stdlib_corpus()


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return toy.train_tokenizer(corpus)


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path, monkeypatch):
    """Every test logs to a real offline wandb run in its own directory, never the network."""
    wandb_dir = tmp_path / "wandb_root"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield wandb_dir
    import wandb

    from ft_callbacks.publish import SINK

    if wandb.run is not None:
        wandb.finish()
    # wandb caches its settings (WANDB_DIR included) per process: reset so the next test's
    # directory is honoured.
    wandb.teardown()
    SINK.enabled = False
    SINK._axis_defined.clear()
    SINK._notices.clear()
