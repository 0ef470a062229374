import pytest

from topoclass.config import Config, config_diff, load_config, parse_override
from topoclass.errors import ConfigError


def test_defaults_validate_and_hash_stably():
    assert Config().digest() == Config().digest()
    assert Config().train.epochs > 0


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.epochz: unknown key"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(path)


def test_overrides_are_typed_and_validated():
    config = load_config(None, dict([parse_override("model.hidden_dim=64"), parse_override("train.lr=1e-3")]))
    assert config.model.hidden_dim == 64 and config.train.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="split"):
        load_config(None, {"data.split.train": 0.9})


def test_diff_names_changed_keys():
    a, b = Config().to_dict(), Config(train={"epochs": 3}).to_dict()
    assert config_diff(a, b) == ["train.epochs"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", True, "train.epochs: Input should be a valid integer"),
        ("train.batch_size", 3.0, "train.batch_size"),
        ("checkpoint.keep_last", "3", "checkpoint.keep_last"),
        ("train.lr", True, "train.lr: a number is expected, not a boolean"),
        ("train.lr", float("inf"), "train.lr: Input should be a finite number"),
        ("train.weight_decay", float("nan"), "train.weight_decay"),
    ],
)
def test_counts_are_strict_integers_and_numbers_finite(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})


def test_renamed_keys_keep_loading_with_a_warning_naming_the_new_key(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(
        "checkpoint: {checkpoint_every_epochs: 2, checkpoint_dir: ck}\n"
        "train: {clear_caches_every_epochs: 1}\n"
    )
    config = load_config(path)
    assert config.checkpoint.every_epochs == 2 and str(config.checkpoint.dir) == "ck"
    assert "checkpoint.checkpoint_every_epochs is now called checkpoint.every_epochs" in caplog.text
    assert "train.clear_caches_every_epochs is no longer used" in caplog.text
    path.write_text("checkpoint: {checkpoint_every_epochs: 2, every_epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"both checkpoint\.checkpoint_every_epochs"):
        load_config(path)


def test_the_space_group_search_is_spglib_or_moyopy():
    assert load_config(None, {"data.graph.symmetry": "moyopy"}).data.graph.symmetry == "moyopy"
    with pytest.raises(ConfigError, match=r"data\.graph\.symmetry"):
        load_config(None, {"data.graph.symmetry": "spglib2"})
