"""Running node commands (qemu-img, ovs-vsctl) without blocking the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass


class CommandError(RuntimeError):
    def __init__(self, argv: tuple[str, ...], code: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {code}: {stderr.strip()}")
        self.argv, self.code, self.stderr = argv, code, stderr


@dataclass(frozen=True)
class Output:
    code: int
    stdout: str
    stderr: str


async def run(
    *argv: str,
    check: bool = True,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> Output:
    """`env`: variables set for the command on top of the agent's own; `stdin`: text the
    command reads (None: nothing)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=None if env is None else {**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        given = None if stdin is None else stdin.encode()
        out, err = await asyncio.wait_for(process.communicate(given), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise CommandError(argv, -9, f"timed out after {timeout:.0f} s") from None
    code = process.returncode or 0
    result = Output(code, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and code != 0:
        raise CommandError(argv, code, result.stderr)
    return result
