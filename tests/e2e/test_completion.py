"""Shell completion: the scripts opctl prints, run by the real bash, zsh and fish.

Names come from a real op-dbusd (libvirt's test driver brings the VM "test";
a Validate brings job 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import PYTHON, base_config, opctl

BIN = Path(PYTHON).parent  # where the venv's opctl is


@pytest.fixture
def address(make_daemon: Any, private_bus: PrivateBus, tmp_path: Path) -> str:
    make_daemon(private_bus, base_config(tmp_path, libvirt={"uri": "test:///default"}))
    assert opctl(private_bus.address, "validate", "--quick").returncode in (0, 1)
    return private_bus.address


def shell(argv: list[str], script: str, address: str) -> list[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OPDBUS_BUS_ADDRESS": address}
    done = subprocess.run(
        [*argv, script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def bash(line: str, address: str) -> list[str]:
    words = line.split(" ")
    script = f"""
source <(opctl completion bash)
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
_opctl
for word in "${{COMPREPLY[@]}}"; do echo "$word"; done
"""
    return shell(["bash", "-c"], script, address)


def test_bash_completes_commands_options_and_names_from_the_bus(address: str) -> None:
    assert bash("opctl v", address) == ["validate", "vm"]
    assert bash("opctl vm sn", address) == ["snapshot"]
    assert bash("opctl jobs list --state r", address) == ["running"]
    assert bash("opctl --no-h", address) == ["--no-headers"]
    assert bash("opctl vm show ", address) == ["test"]  # the test driver's VM, from the bus
    assert bash("opctl jobs show ", address) == ["1"]
    assert bash("opctl ct exec web -- ", address) == []  # the rest is the container's command


@pytest.mark.skipif(shutil.which("fish") is None, reason="make deps installs fish")
def test_fish_completes_names_and_files(address: str, tmp_path: Path) -> None:
    (tmp_path / "profile.json").write_text("{}")
    listed = shell(
        ["fish", "-c"],
        f"opctl completion fish | source; cd {tmp_path}; complete -C'opctl vm show '; "
        "complete -C'opctl vm create prof'",
        address,
    )
    assert listed == ["test", "profile.json"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="make deps installs zsh")
def test_zsh_script_offers_names_and_falls_back_to_files(address: str) -> None:
    # compadd and _files are compsys builtins; stand-ins print what they are given.
    script = """
compdef() { :; }
compadd() { shift; print -l -- "$@"; }
_files() { print FILES; }
source <(opctl completion zsh)
words=(opctl vm show ''); CURRENT=4; _opctl
words=(opctl vm create ''); CURRENT=4; _opctl
"""
    assert shell(["zsh", "-c"], script, address) == ["test", "FILES"]


def test_the_scripts_need_no_daemon() -> None:
    for name in ("bash", "zsh", "fish"):
        printed = opctl("unix:path=/nonexistent/bus", "completion", name)
        assert printed.returncode == 0 and "opctl __complete --shell " + name in printed.stdout
    # Without a daemon a name cannot be offered: nothing, quickly, no error.
    asked = subprocess.run(
        [PYTHON, "-m", "opctl", "__complete", "--shell", "bash", "--", "--bus",
         "unix:path=/nonexistent/bus", "vm", "show", ""],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (asked.returncode, asked.stdout, asked.stderr) == (0, "", "")
