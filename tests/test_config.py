import pytest

from cnnopt.config import RunConfig
from cnnopt.errors import CnnoptError, ConfigError, StudyFileError


def test_flat_keys_route_to_their_section():
    cfg = RunConfig.from_flat(
        {"lr": 0.01, "batchnorm": "before", "hflip": True, "dataset": "mnist"}
    )
    assert cfg.train.lr == 0.01
    assert cfg.model.batchnorm == "before"
    assert cfg.augment.hflip is True
    assert cfg.data.dataset == "mnist"


def test_unknown_key_is_named():
    with pytest.raises(StudyFileError, match="unknown setting 'learning_rate'"):
        RunConfig.from_flat({"learning_rate": 0.1}, where="x.py")


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("lr", "fast", "lr='fast' must be a number"),
        ("epochs", 2.5, "epochs=2.5 must be an integer"),
        ("batchnorm", "middle", "batchnorm='middle' is not one of none, before, after"),
        ("filters", 32, "filters=32 must be a list of int"),
        ("hflip", "yes", "hflip='yes' must be true or false"),
    ],
)
def test_bad_types_echo_key_and_value(key, value, msg):
    with pytest.raises(StudyFileError) as e:
        RunConfig.from_flat({key: value}, where="s.py")
    assert msg in str(e.value) and "s.py" in str(e.value)


def test_inconsistent_config_is_rejected():
    with pytest.raises(ConfigError, match="filters=\\[32\\] has 1 values but conv_blocks=2"):
        RunConfig.from_flat({"filters": [32]})
    with pytest.raises(ConfigError, match="dropout has 3 values"):
        RunConfig.from_flat({"dropout": [0.1, 0.2, 0.3]})
    with pytest.raises(CnnoptError):
        RunConfig.from_flat({"freeze": "half"})


def test_round_trip_through_json_dict():
    cfg = RunConfig.from_flat(
        {"filters": [8, 16], "dropout": [0.1, 0.2], "hidden": [], "patience": 3}
    )
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.model.filters == (8, 16) and again.model.hidden == ()


def test_int_accepted_for_float_and_list_for_tuple():
    cfg = RunConfig.from_flat({"lr": 1, "dropout": 0})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.block_dropouts() == (0.0, 0.0)
