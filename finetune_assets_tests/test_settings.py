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
