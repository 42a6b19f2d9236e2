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
