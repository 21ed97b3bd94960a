"""Everything about the Blender executable: its argument list, its version, its demo scene, its processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from rendernode.progress import VersionBanner, parse_line

log = logging.getLogger(__name__)

DEMO_SCRIPT = Path(__file__).parent / "scenes" / "demo.py"
DEMO_SCENE_NAME = "demo.blend"
# Frame numbers are zero-padded to five digits: Blender's 1048574 upper limit fits in seven,
# but five keeps names short and sorts correctly for any range under 100,000.
OUTPUT_PATTERN = "frame_#####"


class BlenderUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class BlenderInfo:
    executable: str
    version: str
    major: int
    minor: int


def render_argv(
    executable: str,
    scene_path: str,
    *,
    engine: str,
    output_pattern: str,
    file_format: str,
    frame_start: int,
    frame_end: int,
    threads: int,
    version_major: int = 3,
) -> list[str]:
    """The render command as an argument list, in the order Blender applies them.

    Blender handles its arguments left to right: the file must be loaded (``-b``)
    before the options that change its scene, and ``-a`` must come last because
    it renders immediately with whatever was set before it.
    """
    argv = [
        executable,
        # Scripts embedded in a .blend (drivers, registered text blocks) must never run on a render node.
        "--disable-autoexec",
        "--factory-startup",
        "-b",
        scene_path,
        "-E",
        engine,
        "-o",
        output_pattern,
        "-F",
        file_format,
        "-x",
        "1",
        "-s",
        str(frame_start),
        "-e",
        str(frame_end),
        "-t",
        str(threads),
    ]
    if version_major >= 5:
        # Blender 5 moved render progress into its logging system, where it is hidden by default.
        argv[1:1] = ["--log-level", "info"]
    argv.append("-a")
    return argv


async def probe_version(executable: str, timeout: float = 60.0) -> BlenderInfo:
    """Run ``blender --version`` and parse its banner."""
    try:
        proc = await asyncio.create_subprocess_exec(
            executable,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise BlenderUnavailable(f"cannot run Blender at {executable!r}: {exc.strerror or exc}") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await stop_process(proc, grace=1.0)
        raise BlenderUnavailable(f"{executable} --version did not answer in {timeout:.0f} s") from None
    for line in out.decode("utf-8", "replace").splitlines():
        parsed = parse_line(line)
        if isinstance(parsed, VersionBanner):
            return BlenderInfo(executable, parsed.version, parsed.major, parsed.minor)
    raise BlenderUnavailable(f"{executable} --version printed no Blender version (exit {proc.returncode})")


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM the process group, wait up to ``grace`` seconds, SIGKILL it, and always reap.

    Blender runs in its own session (``start_new_session``), so its pid is its
    process-group id and the group takes any helpers it started down with it.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except asyncio.TimeoutError:
            pass
    # The group may outlive its leader; kill whatever is left either way.
    _signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_leftover(pid: int, marker: str) -> bool:
    """Kill a Blender left running by a node that died without stopping it.

    Only a process whose command line names ``marker`` (the job's output dir) is
    touched, so a recycled pid belonging to something else is left alone.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode("utf-8", "replace")
    except OSError:
        return False
    if marker not in cmdline:
        return False
    _signal_group(pid, signal.SIGKILL)
    log.warning("killed Blender pid %d left over from the previous run", pid)
    return True


def _demo_stamp(info: BlenderInfo) -> str:
    digest = hashlib.sha256(DEMO_SCRIPT.read_bytes())
    digest.update(info.version.encode())
    return digest.hexdigest()


async def ensure_demo_scene(info: BlenderInfo, scenes_dir: Path, data_dir: Path) -> Path:
    """Build the demo scene with Blender itself, once per script/Blender version; cached in the data dir."""
    target = scenes_dir / DEMO_SCENE_NAME
    stamp_file = data_dir / "demo.blend.stamp"
    stamp = _demo_stamp(info)
    if target.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return target
    scenes_dir.mkdir(parents=True, exist_ok=True)
    partial = scenes_dir / ".demo.blend.partial"
    proc = await asyncio.create_subprocess_exec(
        info.executable,
        "--disable-autoexec",
        "--factory-startup",
        "-b",
        "--python",
        str(DEMO_SCRIPT),
        "--",
        str(partial),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except BaseException:
        await stop_process(proc, grace=1.0)
        raise
    if proc.returncode != 0 or not partial.exists():
        tail = out.decode("utf-8", "replace")[-2000:]
        raise BlenderUnavailable(f"building the demo scene failed (exit {proc.returncode}):\n{tail}")
    os.replace(partial, target)
    stamp_file.write_text(stamp)
    log.info("built demo scene %s with Blender %s", target, info.version)
    return target
