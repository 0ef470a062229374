import numpy as np
import pytest

from topoclass.config import load_config
from topoclass.features.spectral import PROCESS_SPECTRAL_CACHE, Spectrum
from topoclass.train.run import run_training


@pytest.mark.parametrize(("every", "expected_clears"), [(1, 3), (2, 1), (0, 0)])
def test_trainer_clears_the_spectral_cache_on_its_cadence(
    synthetic_config, tmp_path, monkeypatch, every, expected_clears
):
    monkeypatch.setenv("TOPOCLASS_CACHE_DIR", str(tmp_path / "cache"))
    config = load_config(
        synthetic_config(n=60, epochs=3),
        {"train.clear_caches_every_epochs": every, "run_dir": str(tmp_path / "run")},
    )
    spectrum = Spectrum(np.zeros(2, np.float32), np.ones(2, bool), np.zeros((2, 2), np.float32))
    PROCESS_SPECTRAL_CACHE.put("a-graph", spectrum)
    clears = []
    # Count the clears and keep the entry, so each due epoch finds something to clear.
    monkeypatch.setattr(PROCESS_SPECTRAL_CACHE, "clear", lambda: clears.append(len(PROCESS_SPECTRAL_CACHE)))
    try:
        assert run_training(config) == 0
    finally:
        monkeypatch.undo()
        PROCESS_SPECTRAL_CACHE.clear()
    assert len(clears) == expected_clears
