"""The README's "Try it" block, run as written and in order, against `op-dbusd --sandbox`.

The only change to the text: the sandbox lives in this test's directory, so
`sandbox/` is read as that directory (the test must not write into the
clone). `opctl watch` runs a moment and gets Ctrl-C; `opctl menu` gets a
terminal of its own and the key `q`, as a person would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_sandbox import start_sandbox, wait_for_file
from tests.support import on_a_terminal, read_until

ROOT = Path(__file__).resolve().parents[2]


def try_it_lines() -> list[str]:
    """The commands of the README's "Try it" block (the second terminal's)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("In another terminal:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def without_comment(line: str) -> str:
    """`cmd   # says what it does` -> `cmd` (no `#` appears inside the commands)."""
    return re.sub(r"\s+#.*$", "", line)


def run_menu(line: str, cwd: Path, env: dict[str, str]) -> None:
    terminal_env = {**env, "TERM": "linux"}
    with on_a_terminal(["bash", "-c", line], cwd=cwd, env=terminal_env) as (menu, master):
        seen = read_until(master, b"console", b"", 30)
        assert b"console" in seen, seen[-2000:]  # its footer's keys: drawn
        time.sleep(1)
        os.write(master, b"q")
        assert menu.wait(timeout=20) == 0


def run_watch(line: str, cwd: Path, env: dict[str, str]) -> None:
    watch = subprocess.Popen(
        ["bash", "-c", f"exec {line}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert "watching org.opdbus on " in err


@pytest.mark.skipif(
    shutil.which("lxc-start") is None or os.geteuid() != 0,
    reason="the block creates a container (as root, with LXC)",
)
def test_the_readme_try_it_block_runs_as_written(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    lines = try_it_lines()
    assert lines[0].startswith("export OPDBUS_BUS_ADDRESS=") and len(lines) > 20
    daemon = start_sandbox(box)
    outputs: dict[str, str] = {}
    try:
        wait_for_file(box / "bus-address", daemon)
        env = dict(os.environ)
        for raw in lines:
            line = without_comment(raw).replace("sandbox/", f"{box}/")
            if line.startswith("export "):
                name = line.split()[1].split("=", 1)[0]
                shown = subprocess.run(
                    ["bash", "-c", f"{line} && printenv {name}"],
                    cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                env[name] = shown.stdout.strip()
                continue
            if line.endswith("opctl watch"):
                run_watch(line, ROOT, env)
                continue
            if line.endswith("opctl menu"):
                run_menu(line, ROOT, env)
                continue
            done = subprocess.run(
                ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=300, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{raw}\n{done.stdout}\n{done.stderr}"
            outputs[raw] = done.stdout
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.communicate(timeout=60)
    # What the comments beside the commands promise.
    said = "\n".join(outputs.values())
    assert (
        "libvirt"
        in outputs[next(r for r in outputs if r.endswith("# version, mode, backend health"))]
    )
    assert "+ net/br-state" in said
    assert "test" in outputs[next(r for r in outputs if "opctl vm list" in r)]
