from pathlib import Path

import pytest

from finetune_assets.settings import ConfigError, load_settings, parse_settings


def test_repository_config_has_the_seed_defaults() -> None:
    settings = load_settings(Path(__file__).resolve().parent.parent / "pipeline_config.yaml", environ={})
    assert settings.training_data_threshold == 100
    assert settings.engagement_threshold == 0.06
    assert settings.a_b_test_duration_hours == 168
    assert settings.backend == "local"


def test_defaults_apply_to_an_empty_file() -> None:
    settings = parse_settings({}, source="x.yaml", environ={})
    assert (
        settings.training_data_threshold,
        settings.engagement_threshold,
        settings.a_b_test_duration_hours,
    ) == (
        100,
        0.06,
        168,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"engagement_threshold": 1.5}, "x.yaml: engagement_threshold = 1.5: input should be less than 1"),
        (
            {"training_data_threshold": "many"},
            "x.yaml: training_data_threshold = 'many': input should be a valid integer",
        ),
        ({"backend": "vertex"}, "x.yaml: backend = 'vertex': input should be 'local' or 'openai'"),
        ({"timezone": "Mars/Base"}, "x.yaml: timezone = 'Mars/Base': expected an IANA timezone name"),
        (
            {"training": {"n_epochs": 0}},
            "x.yaml: training.n_epochs = 0: input should be greater than or equal to 1",
        ),
        ({"engagment_threshold": 0.1}, "x.yaml: unknown key 'engagment_threshold'"),
        ({"posts_table": "posts; drop table x"}, "x.yaml: posts_table = 'posts; drop table x'"),
    ],
)
def test_bad_values_give_one_line_naming_key_value_and_expectation(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, source="x.yaml", environ={})
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_environment_overrides_win_over_the_file() -> None:
    settings = parse_settings(
        {"engagement_threshold": 0.06, "training": {"n_epochs": 3}},
        source="x.yaml",
        environ={
            "FINETUNE_ENGAGEMENT_THRESHOLD": "0.08",
            "FINETUNE_TRAINING__N_EPOCHS": "5",
            "FINETUNE_OTHER": "x",
        },
    )
    assert settings.engagement_threshold == 0.08
    assert settings.training.n_epochs == 5


def test_bad_environment_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"a_b_test_duration_hours = 'soon'"):
        parse_settings({}, source="x.yaml", environ={"FINETUNE_A_B_TEST_DURATION_HOURS": "soon"})


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("training_data_threshold: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken, environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(listed, environ={})


@pytest.mark.parametrize(
    ("raw", "key", "expected"),
    [
        ({"max_examples_per_cycle": True}, "max_examples_per_cycle = True", "expected an integer, not a boolean"),
        ({"engagement_threshold": False}, "engagement_threshold = False", "expected a number, not a boolean"),
        ({"training": {"learning_rate": True}}, "training.learning_rate = True", "expected a number"),
        ({"experiment": {"min_users_per_arm": True}}, "experiment.min_users_per_arm = True", "an integer"),
        (
            {"openai": {"hyperparameters": {"n_epochs": True}}},
            "openai.hyperparameters.n_epochs = True",
            "expected an integer, not a boolean",
        ),
        (
            {"openai": {"training_price_per_million_tokens": {"gpt-4o-mini-2024-07-18": True}}},
            "openai.training_price_per_million_tokens",
            "not a boolean: {'gpt-4o-mini-2024-07-18': True}",
        ),
    ],
)
def test_a_boolean_is_never_a_number(raw: dict, key: str, expected: str) -> None:
    """YAML reads `yes` as true and pydantic's lax mode would read true as 1: refused, naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, source="x.yaml", environ={})
    message = str(info.value)
    assert message.startswith(f"x.yaml: {key}"), message
    assert expected in message and "YAML reads yes/no" in message and "\n" not in message


def test_yaml_yes_in_a_file_and_in_an_override_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("max_examples_per_cycle: yes\n")
    with pytest.raises(ConfigError, match=r"max_examples_per_cycle = True: expected an integer, not a boolean"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match=r"training\.n_epochs = True: expected an integer"):
        parse_settings({}, source="x.yaml", environ={"FINETUNE_TRAINING__N_EPOCHS": "on"})


def test_numbers_written_as_text_still_parse() -> None:
    settings = parse_settings(
        {"max_examples_per_cycle": "5", "training": {"learning_rate": "0.01"}},
        source="x.yaml",
        environ={"FINETUNE_MIN_IMPRESSIONS": "7", "FINETUNE_OPENAI__HYPERPARAMETERS__N_EPOCHS": "auto"},
    )
    assert (settings.max_examples_per_cycle, settings.training.learning_rate, settings.min_impressions) == (5, 0.01, 7)
    assert settings.openai.hyperparameters.n_epochs == "auto"
