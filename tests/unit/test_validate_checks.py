from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from opdbus.config import Config
from opdbus.models.health import Probe
from opdbus.models.validation import CheckStatus, ValidateOptions
from opdbus.services.audit import AuditLog
from opdbus.services.health import EVERY_MODE, Backend, BackendHealth
from opdbus.services.jobs import JobFailed
from opdbus.services.validate import HostPaths, Validator, _check_config, _check_dirs, _check_kvm


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_dirs_fail_and_fix_creates_them_with_the_right_mode(tmp_path: Path) -> None:
    wanted = [tmp_path / "state", tmp_path / "state" / "jobs"]
    result = _check_dirs(wanted, 0o750, fix=False, private=True)
    assert result.status is CheckStatus.FAIL and "is missing" in result.message
    assert not wanted[0].exists()
    result = _check_dirs(wanted, 0o750, fix=True, private=True)
    assert result.status is CheckStatus.PASS
    assert result.fixed == [f"created {path} with mode 0750" for path in wanted]
    assert all(mode(path) == 0o750 for path in wanted)


def test_too_open_dirs_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()
    os.chmod(path, 0o777)
    result = _check_dirs([path], 0o750, fix=False, private=True)
    assert result.status is CheckStatus.FAIL and "mode 0777" in result.message
    result = _check_dirs([path], 0o750, fix=True, private=True)
    assert result.status is CheckStatus.PASS and mode(path) == 0o750
    assert result.fixed == [f"{path}: mode 0777 -> 0750"]


def test_world_readable_is_fine_for_public_dirs(tmp_path: Path) -> None:
    path = tmp_path / "src"
    path.mkdir()
    os.chmod(path, 0o755)
    assert _check_dirs([path], 0o755, fix=False, private=False).status is CheckStatus.PASS


def test_config_checks(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "op-dbus" / "config.json"
    assert _check_config(config, fix=False).status is CheckStatus.WARN
    fixed = _check_config(config, fix=True)
    assert (
        fixed.fixed == [f"created {config.parent} with mode 0755"] and mode(config.parent) == 0o755
    )
    config.write_text("{}")
    os.chmod(config, 0o666)
    assert _check_config(config, fix=False).status is CheckStatus.FAIL
    result = _check_config(config, fix=True)
    assert result.status is CheckStatus.PASS and mode(config) == 0o644


def test_kvm_device_group_mode_and_usability(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"  # right group and mode, but no KVM behind it
    fake.write_bytes(b"")
    os.chmod(fake, 0o600)
    result = _check_kvm(fake, fix=False)
    assert result.status is CheckStatus.FAIL and "mode 0600, not 0660" in result.message
    result = _check_kvm(fake, fix=True)
    assert mode(fake) == 0o660
    assert result.fixed and "mode 0660" in result.fixed[0]
    assert result.status is CheckStatus.FAIL and "cannot be used" in result.message
    assert _check_kvm(tmp_path / "absent", fix=False).status in (CheckStatus.FAIL, CheckStatus.WARN)


class RecordingContext:
    """Stands in for JobContext: remembers the log lines a job body writes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(text)

    def step(self, done: int, total: int) -> None:
        pass


async def test_a_check_that_cannot_run_fails_instead_of_crashing_the_job(tmp_path: Path) -> None:
    async def no_polkit() -> Probe:
        return Probe(False, "absent")

    # A file where the state directory should be: creating it raises NotADirectoryError.
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = Config.model_validate({"mode": "agent", "state_dir": str(blocker / "state")})
    health = BackendHealth(
        config, bus_detail="test", backends=[Backend("polkit", EVERY_MODE, no_polkit)]
    )
    validator = Validator(
        config, HostPaths(config_file=tmp_path / "c.json"), health, AuditLog(tmp_path / "audit")
    )
    ctx = RecordingContext()
    with pytest.raises(JobFailed) as info:
        await validator.job(ValidateOptions(quick=True, fix=True))(ctx)  # type: ignore[arg-type]
    state = next(c for c in info.value.output["checks"] if c["name"] == "state-dir")
    assert state["status"] == "fail"
    assert state["message"].startswith("could not check or fix: Not a directory")
    assert any(line.startswith("[fail] state-dir: could not check or fix") for line in ctx.lines)
