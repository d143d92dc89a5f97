from importlib.metadata import entry_points

import pytest
from pretraining_data import PRETRAIN_CFG
from spacy import util
from spacy.util import registry

from spacy_bert_plugin.pretraining.settings import SettingsError, read_settings


def settings_with(**overrides):
    return read_settings(util.load_config(PRETRAIN_CFG, overrides=overrides, interpolate=True))


def test_objectives_come_from_the_spacy_entry_point_group():
    """Another package's objectives (and ours, from setup.cfg) load from `spacy_bert_objectives`."""
    assert registry.bert_objectives.entry_point_namespace == "spacy_bert_objectives"
    names = {entry.name for entry in entry_points(group="spacy_bert_objectives")}
    assert {f"spacy_bert_plugin.{name}.v1" for name in ("MLM", "NSP", "SOP", "RTD")} <= names


def test_shipped_config_validates():
    settings = settings_with()
    assert set(settings.objectives) == {"mlm", "nsp"}
    assert settings.objectives["mlm"].mask_rate == 0.15


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("bert_pretraining.max_steps", "many", "max_steps"),
        ("bert_pretraining.batch_tokens", -5, "batch_tokens"),
        ("bert_pretraining.autocast", "int4", "autocast"),
        ("bert_pretraining.optimizer.decay", "exponential", "optimizer.decay"),
        ("bert_pretraining.bad_lines", "ignore", "bad_lines"),
    ],
)
def test_wrong_values_are_named(key, value, message):
    with pytest.raises(SettingsError, match=message):
        settings_with(**{key: value})


def test_null_switches_an_objective_off():
    settings = settings_with(**{"bert_pretraining.objectives.nsp": None})
    assert set(settings.objectives) == {"mlm"}
    with pytest.raises(SettingsError, match="add at least the MLM objective"):
        settings_with(**{"bert_pretraining.objectives.nsp": None, "bert_pretraining.objectives.mlm": None})


def test_unknown_key_is_rejected():
    with pytest.raises(SettingsError, match="max_stepz"):
        settings_with(**{"bert_pretraining.max_stepz": 3})


def test_two_pair_objectives_are_rejected():
    config = util.load_config(PRETRAIN_CFG, interpolate=True)
    config["bert_pretraining"]["objectives"]["sop"] = {"@bert_objectives": "spacy_bert_plugin.SOP.v1"}
    with pytest.raises(SettingsError, match="at most one segment-pair objective"):
        read_settings(config)


def test_missing_section():
    config = util.load_config(PRETRAIN_CFG, interpolate=True)
    del config["bert_pretraining"]
    with pytest.raises(SettingsError, match=r"no \[bert_pretraining\] section"):
        read_settings(config)


@pytest.mark.parametrize("length", [1, 3, 4])
def test_too_short_max_length_is_refused_with_the_settings(length):
    """With NSP a sequence needs [CLS], two [SEP] and a piece in each segment."""
    with pytest.raises(SettingsError, match=rf"max_length = {length} leaves no room for text: at least 5"):
        settings_with(**{"bert_pretraining.max_length": length})
    assert settings_with(**{"bert_pretraining.max_length": 5}).max_length == 5
    no_pairs = {"bert_pretraining.objectives.nsp": None}
    if length < 4:
        with pytest.raises(SettingsError, match="at least 4"):
            settings_with(**no_pairs, **{"bert_pretraining.max_length": length})
    else:
        assert settings_with(**no_pairs, **{"bert_pretraining.max_length": length}).max_length == 4
