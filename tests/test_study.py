import optuna
import pytest

from cnnopt.errors import StudyFileError
from cnnopt.study import Study, parse_override

from .conftest import ROOT


def test_shipped_studies_load_and_replay_from_params():
    for path in sorted((ROOT / "studies").glob("*.py")):
        study = Study.load(path)
        sampler = optuna.samplers.RandomSampler(seed=3)
        ostudy = optuna.create_study(sampler=sampler)
        for _ in range(8):
            trial = ostudy.ask()
            cfg = study.resolve(trial)
            ostudy.tell(trial, 0.5)
            # any stored trial can be rebuilt from its params alone
            assert study.config_from_params(trial.params) == cfg, path.name


def test_a_study_file_takes_its_space_from_a_sibling(write_study):
    """Studies that differ only in settings share one space() instead of copying it: the file's
    folder is on the import path while it loads, and only then."""
    import sys

    write_study(
        """
        def space(trial):
            return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}
        """,
        name="base_space.py",
    )
    path = write_study("from base_space import space\n\nname = 'sibling'\ndataset = 'synthetic'\n")
    study = Study.load(path)
    trial = optuna.create_study().ask()
    cfg = study.resolve(trial)
    assert study.config_from_params(trial.params) == cfg
    assert set(trial.params) == {"lr"}
    assert str(path.parent) not in sys.path
    # the shipped Pareto study's space is fashion_cnn_bn's own
    assert Study.load(ROOT / "studies" / "fashion_pareto.py").space.__module__ == "fashion_cnn_bn"


def test_settings_and_fixed_values(write_study):
    path = write_study(
        """
        name = "s1"
        dataset = "mnist"
        epochs = 3
        pruner = "hyperband"
        def space(trial):
            return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}
        """
    )
    study = Study.load(path, {"epochs": 5, "train_subset": 1000})
    assert study.name == "s1"
    assert study.settings.pruner == "hyperband"
    cfg = study.base_config()
    assert cfg.train.epochs == 5 and cfg.data.train_subset == 1000 and cfg.data.dataset == "mnist"
    assert isinstance(study.make_pruner(), optuna.pruners.HyperbandPruner)


@pytest.mark.parametrize(
    "source,message",
    [
        ("epocs = 3\n", "unknown setting 'epocs'"),
        ("epochs = 'ten'\n", "epochs='ten' must be an integer"),
        ("sampler = 'bayes'\n", "sampler='bayes' is not one of"),
        ("def space(trial):\n    return [1]\n", None),
        ("epochs = = 3\n", "syntax error"),
        ("import nonexistent_module_xyz\n", "failed to load: ModuleNotFoundError"),
        ("space = 3\n", "space must be a function"),
    ],
)
def test_bad_study_files_name_the_file_and_key(write_study, source, message):
    path = write_study(source, name="bad.py")
    if message is None:  # a space() returning the wrong type fails when sampled
        study = Study.load(path)
        with pytest.raises(StudyFileError, match="returned list, not a dict"):
            study.resolve(optuna.trial.FixedTrial({}))
        return
    with pytest.raises(StudyFileError) as e:
        Study.load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_space_returning_unknown_key_is_named(write_study):
    path = write_study("def space(trial):\n    return {'lrate': 0.1}\n")
    with pytest.raises(StudyFileError, match="space\\(\\): unknown setting 'lrate'"):
        Study.load(path).resolve(optuna.trial.FixedTrial({}))


def test_set_overrides_parse_literals():
    assert parse_override("epochs=2") == ("epochs", 2)
    assert parse_override("filters=[32, 64]") == ("filters", [32, 64])
    assert parse_override("hflip=true") == ("hflip", True)
    assert parse_override("dataset=mnist") == ("dataset", "mnist")
    assert parse_override("train_subset=None") == ("train_subset", None)
    with pytest.raises(StudyFileError, match="expected key=value"):
        parse_override("epochs")


def _documented_values() -> list[tuple[str, str, object]]:
    """(key, the value as typed on the command line, what the setting must hold) for every value
    the README documents: each choice of every string setting, and the typed ones."""
    from cnnopt.config import CHOICES
    from cnnopt.study import STUDY_CHOICES

    cases = [(k, v, v) for k, vals in {**CHOICES, **STUDY_CHOICES}.items() for v in vals]
    cases += [("freeze", "backbone", "backbone"), ("freeze", "last:2", "last:2")]
    return cases + [
        ("hflip", "true", True), ("hflip", "false", False), ("pretrained", "True", True),
        ("global_pool", "true", True), ("tta_flip", "true", True), ("checkpoint", "true", True),
        ("epochs", "2", 2), ("lr", "1e-3", 1e-3), ("lr", "0.05", 0.05), ("timeout", "3600", 3600.0),
        ("timeout", "none", None), ("train_subset", "none", None), ("train_subset", "5000", 5000),
        ("patience", "none", None), ("patience", "3", 3), ("image_size", "none", None),
        ("data_dir", "none", None), ("data_dir", "/data/fm", "/data/fm"),
        ("filters", "[32,64]", (32, 64)), ("filters", "[32, 64]", (32, 64)),
        ("hidden", "[]", ()), ("dropout", "0.25", 0.25), ("dropout", "[0.1,0.2]", (0.1, 0.2)),
        ("name", "2024", "2024"), ("name", "fm_quick", "fm_quick"), ("crop_padding", "2", 2),
        ("enqueue", "[{'lr': 0.01}]", ({"lr": 0.01},)), ("val_fraction", "0.1", 0.1),
    ]  # fmt: skip


@pytest.mark.parametrize("key,text,expected", _documented_values())
def test_every_documented_value_is_accepted_by_set(write_study, key, text, expected):
    from cnnopt.study import STUDY_TYPES

    path = write_study(
        "def space(trial):\n    return {'lr': trial.suggest_float('lr', 1e-3, 1e-1)}\n"
    )
    k, value = parse_override(f"{key}={text}")
    study = Study.load(path, {k: value})
    got = getattr(study.settings, key) if key in STUDY_TYPES else study.fixed[key]
    assert got == expected and type(got) is type(expected)


def test_bad_override_names_set(write_study):
    path = write_study("epochs = 2\n")
    with pytest.raises(StudyFileError, match="--set: unknown setting 'bogus'"):
        Study.load(path, {"bogus": 1})
    with pytest.raises(StudyFileError, match="--set: lr='x' must be a number"):
        Study.load(path, {"lr": "x"})


def test_missing_file():
    with pytest.raises(StudyFileError, match="study file not found: nope.py"):
        Study.load("nope.py")


def test_enqueue_is_validated_against_the_space(write_study):
    src = "def space(trial):\n    return {'lr': trial.suggest_float('lr', 1e-3, 1e-1)}\n"
    ok = Study.load(write_study(src + "enqueue = [{'lr': 0.01}]\n", name="ok.py"))
    assert ok.settings.enqueue == ({"lr": 0.01},)
    with pytest.raises(StudyFileError, match="enqueue\\[0\\]: .*'lr'"):
        Study.load(write_study(src + "enqueue = [{'learning_rate': 0.01}]\n", name="bad.py"))
    with pytest.raises(StudyFileError, match="enqueue\\[0\\] must be a dict"):
        Study.load(write_study(src + "enqueue = [0.01]\n", name="bad2.py"))


def test_enqueued_value_outside_the_space_is_rejected(write_study):
    src = "def space(trial):\n    return {'lr': trial.suggest_float('lr', 1e-3, 1e-1)}\n"
    with pytest.raises(StudyFileError, match="enqueue\\[0\\]: .*0.5"):
        Study.load(write_study(src + "enqueue = [{'lr': 0.5}]\n", name="out.py"))


def test_set_pins_a_searched_parameter(write_study):
    path = write_study(
        """
        def space(trial):
            return {
                "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
                "filters": [trial.suggest_categorical("base", [8, 16]), 32],
            }
        """
    )
    study = Study.load(path, {"lr": 0.05, "filters": [4, 4], "epochs": 2})
    ostudy = optuna.create_study(sampler=study.make_sampler())
    trial = ostudy.ask()
    cfg = study.resolve(trial)
    assert trial.params["lr"] == 0.05 and cfg.train.lr == 0.05  # the params say what was trained
    assert cfg.model.filters == (4, 4) and cfg.train.epochs == 2
    assert study.describe()["overrides"] == {"lr": 0.05, "filters": [4, 4], "epochs": 2}
    # without --set the space decides
    free = Study.load(path)
    assert free.resolve(optuna.create_study(sampler=free.make_sampler()).ask()).train.lr != 0.05


@pytest.mark.parametrize(
    "body,error",
    [
        (
            "    return {'lr': trial.suggest_float('lr', 1e-3, 1e-1), 'x': {}['k']}\n",
            "KeyError: 'k'",
        ),
        ("    return {'lr': trail.suggest_float('lr', 1e-3, 1e-1)}\n", "NameError: name 'trail'"),
        ("    return {'lr': 1 / 0}\n", "ZeroDivisionError: division by zero"),
    ],
)
def test_error_in_space_names_file_and_line(write_study, body, error):
    path = write_study("epochs = 1\n\ndef space(trial):\n" + body, name="buggy.py")
    study = Study.load(path)
    with pytest.raises(StudyFileError) as e:
        study.resolve(optuna.create_study().ask())
    assert str(e.value).startswith(f"{path}:4: space() failed: {error}")


@pytest.mark.parametrize(
    "source, overrides, rung",
    [
        ("epochs = 10\n", {}, 3),  # the default: 30% of epochs
        ("epochs = 30\n", {}, 9),
        ("epochs = 2\n", {}, 1),  # never below 1
        ("epochs = 10\nmin_resource = 1\n", {}, 1),  # as set
        ("epochs = 10\nmin_resource = 1\n", {"min_resource": None}, 3),  # --set min_resource=none
        ("epochs = 10\n", {"epochs": 20}, 6),  # follows --set epochs
    ],
)
def test_successive_halving_first_rung(write_study, source, overrides, rung):
    study = Study.load(write_study(source), overrides)
    pruner = study.make_pruner()
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == rung


# -- budgets and Pareto studies ------------------------------------------------------------------


def test_pareto_study_settings_resolve_to_directions_and_rungs(write_study):
    study = Study.load(
        write_study("epochs = 10\nobjectives = ['val_accuracy', 'flops', 'latency_ms']\n")
    )
    assert study.multi_objective and study.directions == ["maximize", "minimize", "minimize"]
    assert study.cost_objectives == ("flops", "latency_ms") and study.needs_latency
    # successive halving's rungs (first at 30% of epochs, then doubling), applied by cnnopt
    rungs = study.make_rung_pruner()
    assert rungs.rungs == (3, 6) and rungs.reduction_factor == 2 and rungs.maximize
    assert isinstance(study.make_pruner(), optuna.pruners.NopPruner)  # Optuna's cannot
    assert Study.load(write_study("objectives = ['val_loss', 'params']\n", "l.py"), {}).directions
    loss = Study.load(write_study("objectives=['val_loss','params']\ndirection='minimize'\n"))
    assert loss.directions == ["minimize", "minimize"] and not loss.make_rung_pruner().maximize
    none = Study.load(write_study("objectives = ['val_accuracy', 'params']\npruner = 'none'\n"))
    assert none.make_rung_pruner() is None
    budget = Study.load(write_study("max_params = 100000\nmax_flops = 5e6\n"))
    assert budget.limits == {"params": 100000, "flops": 5e6} and not budget.multi_objective
    assert budget.needs_cost and not budget.needs_latency
    assert budget.settings.max_flops == 5_000_000  # an integer-valued float is an integer


@pytest.mark.parametrize(
    "source,message",
    [
        ("objectives = ['flops', 'val_accuracy']\n", "the first must be the metric"),
        ("objectives = ['val_accuracy']\n", "one or two different costs"),
        ("objectives = ['val_accuracy', 'speed']\n", "one or two different costs"),
        ("objectives = ['val_accuracy', 'flops', 'flops']\n", "one or two different costs"),
        ("objectives = ['val_accuracy', 'flops']\nmetric = 'val_loss'\n", "metric='val_loss'"),
        (
            "objectives = ['val_accuracy', 'flops']\ndirections = ['maximize', 'maximize']\n",
            "a cost is minimized",
        ),
        ("objectives = ['val_accuracy', 'flops']\ndirections = ['maximize']\n", "has 1 values"),
        ("directions = ['maximize']\n", "needs objectives"),
        ("objectives = ['val_accuracy', 'flops']\npruner = 'median'\n", "pruner='median'"),
        ("objectives = ['val_accuracy', 'flops']\nsampler = 'cmaes'\n", "sampler='cmaes'"),
        ("max_params = 0\n", "max_params=0 must be positive"),
        ("max_latency_ms = 'fast'\n", "max_latency_ms='fast' must be"),
        ("pareto_rule = 'best'\n", "pareto_rule='best' is not one of"),
    ],
)
def test_bad_budget_and_objective_settings_are_named(write_study, source, message):
    path = write_study(source, name="bad.py")
    with pytest.raises(StudyFileError) as e:
        Study.load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_trial_source_tells_the_search_from_a_written_down_configuration():
    from cnnopt.study import (
        SOURCE_ENQUEUED,
        SOURCE_SEARCH,
        SOURCE_STUDY_FILE,
        WARM_START,
        trial_source,
    )

    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    ostudy.enqueue_trial({"x": 0.5}, user_attrs={WARM_START: True})  # the study file's enqueue
    ostudy.enqueue_trial({"x": 0.25})  # someone's study.enqueue_trial outside cnnopt
    ostudy.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    warm, hand, sampled = ostudy.get_trials()
    assert trial_source(warm) == SOURCE_STUDY_FILE == "written into the study file (enqueue)"
    assert trial_source(hand) == SOURCE_ENQUEUED
    assert trial_source(sampled) == SOURCE_SEARCH == "found by the search"
    # a retry of a failed sampled trial is re-queued with its params fixed: still the search's
    retry = optuna.trial.create_trial(
        params={"x": 0.3},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        value=0.3,
        system_attrs={"fixed_params": {"x": 0.3}, "failed_trial": 2},
    )
    assert trial_source(retry) == SOURCE_SEARCH
