import os
import subprocess
import sys
from pathlib import Path

from finetune_assets.cli import main
from finetune_assets_tests.conftest import write_config


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_assets.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_explains_the_product_and_labels_the_simulation() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("seed", "demo", "SIMULATED", "stand-in for real users", "pipeline_config.yaml"):
        assert word in result.stdout


def test_bad_config_is_one_line_and_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engagement_threshold: 2\n")
    result = run_cli("--config", str(bad), "seed")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "engagement_threshold = 2" in result.stderr and "Traceback" not in result.stderr


def test_bad_argument_is_refused(tmp_path: Path) -> None:
    result = run_cli("seed", "--posts", "-3")
    assert result.returncode == 2
    assert "'-3': expected a positive integer" in result.stderr


def test_seed_then_refuse_to_mix_worlds_then_list_posts(tmp_path: Path, state_dir: Path, capsys) -> None:
    config = str(write_config(tmp_path / "c.yaml", state_dir))
    assert main(["--config", config, "seed", "--posts", "200", "--users", "50"]) == 0
    assert "seeded 200 simulated posts" in capsys.readouterr().out
    assert main(["--config", config, "seed", "--posts", "200"]) == 1
    assert "pass --reset" in capsys.readouterr().err
    assert main(["--config", config, "seed", "--posts", "100", "--reset"]) == 0
    assert main(["--config", config, "posts", "ds-missing"]) == 2
    assert "not found" in capsys.readouterr().err


def test_ramp_enrolls_more_users_without_moving_anyone_and_refuses_a_ramp_down(
    tmp_path: Path, state_dir: Path, store, capsys
) -> None:
    from finetune_assets.experiments.runtime.assignment import assign_variant
    from finetune_assets_tests.conftest import start_experiment

    config = str(write_config(tmp_path / "c.yaml", state_dir))
    experiment = start_experiment(store)
    store.set_coverage("exp-1", 0.05)  # the smoke-test share
    users = [f"user-{i}" for i in range(4000)]
    before = {u: assign_variant(u, experiment.salt, split=0.5, coverage=0.05) for u in users}

    assert main(["--config", config, "ramp", "exp-1", "--coverage", "0.5"]) == 0
    assert "coverage 50% of users" in capsys.readouterr().out
    ramped = store.get_experiment("exp-1")
    assert ramped.coverage == 0.5
    after = {u: assign_variant(u, ramped.salt, split=ramped.split, coverage=ramped.coverage) for u in users}
    assert all(after[u] == arm for u, arm in before.items() if arm is not None)  # nobody enrolled changes arm
    assert sum(a is not None for a in after.values()) > 5 * sum(a is not None for a in before.values())

    assert main(["--config", config, "ramp", "exp-1", "--coverage", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "coverage decreased from 0.5 to 0.2 within a phase" in err and err.count("\n") == 1
    assert main(["--config", config, "ramp", "exp-9", "--coverage", "0.9"]) == 1
    assert "experiment 'exp-9': no such experiment" in capsys.readouterr().err
