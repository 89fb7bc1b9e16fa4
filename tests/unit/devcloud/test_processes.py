from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from stratus_devcloud.processes import Daemon


def daemon(tmp_path: Path, *args: str) -> Daemon:
    sleep = shutil.which("sleep")
    assert sleep
    return Daemon("sleeper", (sleep, *args), tmp_path / "run", tmp_path / "logs")


def test_start_is_idempotent_and_stop_leaves_nothing(tmp_path: Path) -> None:
    sleeper = daemon(tmp_path, "300")
    pid = sleeper.start()
    try:
        assert sleeper.start() == pid
        assert sleeper.running()
    finally:
        assert sleeper.stop(grace=5)
    assert not sleeper.running() and not sleeper.pid_file.exists()
    assert sleeper.stop() is False


def test_a_recycled_pid_is_not_mistaken_for_the_daemon(tmp_path: Path) -> None:
    other = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        sleeper = daemon(tmp_path, "300")
        sleeper.run_dir.mkdir(parents=True)
        sleeper.pid_file.write_text(f"{other.pid}\n")
        assert sleeper.pid() is None
        assert not sleeper.pid_file.exists()
        assert other.poll() is None  # and it was left alone
    finally:
        other.kill()
        other.wait()


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    echo = Daemon("echo", (shutil.which("echo") or "echo", "hello"), tmp_path / "r", tmp_path / "l")
    echo.start()
    for _ in range(100):
        if "hello" in echo.log_tail():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert echo.log_tail().splitlines()[-1] == "hello"
