"""`qemu-img convert` with its progress: shared by the volume drivers that copy data."""

from __future__ import annotations

import asyncio
import re

from stratus_agent import process
from stratus_agent.base import ProgressListener

# `qemu-img convert -p` rewrites one line, "    (12.34/100%)", ending each with \r.
PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# A copy takes as long as the data is big.
COPY_TIMEOUT = 24 * 3600.0


async def convert(args: tuple[str, ...], progress: ProgressListener | None) -> None:
    """`qemu-img convert -p`, reporting its percentage to `progress` as it goes."""
    argv = ("qemu-img", "convert", "-p", *args)
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    stderr = asyncio.create_task(child.stderr.read())

    async def follow(stdout: asyncio.StreamReader) -> None:
        last = -1
        while chunk := await stdout.read(4096):
            for match in PROGRESS.finditer(chunk):
                percent = int(float(match.group(1)))
                if percent != last and progress is not None:
                    last = percent
                    progress(percent)

    try:
        await asyncio.wait_for(follow(child.stdout), COPY_TIMEOUT)
        code = await child.wait()
    except BaseException:
        if child.returncode is None:
            child.kill()
            await child.wait()
        raise
    finally:
        err = (await stderr).decode(errors="replace")
    if code != 0:
        raise process.CommandError(argv, code, err)
