"""Trees evaluated through LightGBM's C library give LightGBM's own predictions, bit for bit."""

from __future__ import annotations

import gzip

import lightgbm
import numpy as np
import pytest

from topoclass.api import bundled_model_dir
from topoclass.inference.boosters import Booster, BoosterError


def rows_for(model: lightgbm.Booster, n: int = 600, seed: int = 0) -> np.ndarray:
    """Random rows as wide as the model reads, a tenth of the entries missing (NaN)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=3.0, size=(n, model.num_feature())).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("name", ["tang2019", "tqc2020"])
def test_bundled_trees_predict_exactly_as_lightgbm(name):
    files = sorted((bundled_model_dir(name) / "serving").glob("trees-*.txt.gz"))
    assert files
    for path in files:
        text = gzip.decompress(path.read_bytes()).decode()
        reference = lightgbm.Booster(model_str=text)
        x = rows_for(reference)
        ours = Booster(text, threads=2).predict(x)  # 600 rows: two threads
        assert ours.shape == np.asarray(reference.predict(x)).shape
        np.testing.assert_array_equal(ours, reference.predict(x))


def test_regression_trees_predict_exactly_as_lightgbm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = x[:, 0] * 2 - x[:, 1] + rng.normal(scale=0.1, size=200)
    model = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(x, y).booster_
    text = model.model_to_string()
    np.testing.assert_array_equal(Booster(text).predict(x), model.predict(x))
    assert Booster(text).predict(x[:0]).shape == (0,)


def test_a_damaged_model_text_is_refused_with_lightgbms_reason():
    with pytest.raises(BoosterError, match="LightGBM: "):
        Booster("tree\nversion=v4\nnot a model")


def test_a_few_rows_are_predicted_on_one_thread_and_many_on_all_given():
    text = gzip.decompress(
        next((bundled_model_dir("tang2019") / "serving").glob("trees-*.txt.gz")).read_bytes()
    )
    booster = Booster(text.decode(), threads=4)
    assert [booster.threads_for(rows) for rows in (0, 1, 50, 255)] == [1, 1, 1, 1]
    assert [booster.threads_for(rows) for rows in (512, 767, 1024, 100_000)] == [2, 2, 4, 4]
    assert Booster(text.decode(), threads=1).threads_for(100_000) == 1
