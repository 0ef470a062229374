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
