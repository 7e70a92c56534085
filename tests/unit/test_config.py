from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdbus.__main__ import main
from opdbus.config import Config, ConfigError, Mode, load_config, with_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.json", required=False)
    assert config == Config()
    assert config.mode is Mode.FULL and config.auth.admin_group == "opdbus"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.json", required=True)


def test_valid_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        json.dumps(
            {"mode": "agent", "jobs": {"retention_seconds": 5}, "validate": {"disk_warn_gib": 2}}
        ),
    )
    config = load_config(path, required=True)
    assert config.mode is Mode.AGENT
    assert config.jobs.retention_seconds == 5
    assert config.validate_.disk_warn_gib == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"jobs": {"retention_seconds": -5}}',
            "jobs.retention_seconds: Input should be greater than or equal to 0 (got -5)",
        ),
        (
            '{"mode": "turbo"}',
            "mode: Input should be 'agent', 'standalone' or 'full' (got 'turbo')",
        ),
        ('{"auth": {"admin_grup": "x"}}', "auth.admin_grup: unknown setting (got 'x')"),
        (
            '{"jobs": {"max_concurrent": "many"}}',
            "jobs.max_concurrent: Input should be a valid integer",
        ),
        ('{"mode": "full",', "line 1 column 17"),
        ("[1, 2]", "(top level): must be a JSON object"),
    ],
)
def test_bad_file_names_the_field_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(path))


def test_daemon_exits_2_with_one_line_on_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '{"jobs": {"max_concurrent": 0}}')
    assert main(["--config", str(path), "--bus", "unix:path=/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "jobs.max_concurrent" in err and "greater than or equal to 1" in err


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = with_overrides(Config(), mode="standalone", state_dir=str(tmp_path), log_level=None)
    assert config.mode is Mode.STANDALONE and config.state_dir == tmp_path
    with pytest.raises(ConfigError, match="mode"):
        with_overrides(Config(), mode="bogus")
