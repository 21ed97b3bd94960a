"""A stand-in for Blender in tests that need speed or injected faults.

It accepts the render arguments rendernode passes, prints what Blender 3.4
prints (lines recorded from the real thing, see tests/fixtures/), and writes a
small real PNG per frame. Behaviour is picked with environment variables:

FAKE_BLENDER_MODE      ok | no-camera | exit1 | skip-last | ignore-term | replay
FAKE_BLENDER_FRAME_SECONDS  time spent per frame (default 0.05)
FAKE_BLENDER_PIDFILE   append this process's pid here at start
FAKE_BLENDER_LOG       (replay) a captured log to print, with its Saved: paths rewritten
FAKE_BLENDER_FAIL_FRAME  (exit1) the frame at which to die
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
import zlib

VERSION_BANNER = "Blender 3.4.1\n\tbuild date: 2023-02-09\n\tbuild hash: 55485cb379f7\n"


def png_bytes(width: int = 8, height: int = 6, shade: int = 128) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([shade, 64, 255 - shade]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def parse_args(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    flags_with_value = {
        "-b": "file",
        "-o": "output",
        "-F": "format",
        "-s": "start",
        "-e": "end",
        "-E": "engine",
        "-t": "threads",
        "-x": "ext",
        "--log-level": "log_level",
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in flags_with_value and i + 1 < len(argv):
            options[flags_with_value[arg]] = argv[i + 1]
            i += 2
            continue
        if arg == "-a":
            options["animation"] = "1"
        i += 1
    return options


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def frame_path(pattern: str, frame: int, extension: str) -> str:
    hashes = pattern.count("#")
    name = pattern.replace("#" * hashes, str(frame).zfill(hashes)) if hashes else f"{pattern}{frame:04d}"
    return f"{name}.{extension}"


def render_frame(frame: int, seconds: float) -> None:
    steps = 4
    head = f"Fra:{frame} Mem:9.05M (Peak 10.83M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer"
    out(f"{head} | Synchronizing object | Cube")
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        sample = step * 4
        remaining = seconds * (steps - step) / steps
        out(
            f"Fra:{frame} Mem:11.89M (Peak 11.89M) | Time:00:{seconds * step / steps:05.2f} | "
            f"Remaining:00:{remaining:05.2f} | Mem:2.74M, Peak:2.74M | Scene, ViewLayer | Sample {sample}/16"
        )
    out(f"Fra:{frame} Mem:12.77M (Peak 14.53M) | Time:00:{seconds:05.2f} | Mem:2.74M, Peak:2.74M | Scene, ViewLayer"
        " | Finished")


def replay(log_path: str, options: dict[str, str], extension: str) -> int:
    """Print a captured log line by line, writing the frames it says it saved."""
    frame = int(options.get("start", "1"))
    delay = float(os.environ.get("FAKE_BLENDER_LINE_SECONDS", "0"))
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("Saved: "):
                path = frame_path(options["output"], frame, extension)
                with open(path, "wb") as image:
                    image.write(png_bytes())
                line = f"Saved: '{path}'"
                frame += 1
            elif line.startswith("Fra:"):
                line = "Fra:" + str(frame) + line[line.index(" ") :]
            out(line)
            if delay:
                time.sleep(delay)
    return 0


def main(argv: list[str]) -> int:
    if "--version" in argv or "-v" in argv:
        sys.stdout.write(VERSION_BANNER)
        return 0
    pidfile = os.environ.get("FAKE_BLENDER_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    mode = os.environ.get("FAKE_BLENDER_MODE", "ok")
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    options = parse_args(argv)
    extension = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr"}.get(options.get("format", "PNG"), "png")
    out("Blender 3.4.1")
    scene = options.get("file", "")
    if not os.path.isfile(scene):
        out(f"Error: Cannot read file '{scene}': No such file or directory")
        out("")
        out("Blender quit")
        return 0
    out(f"Read blend: {scene}")
    if mode == "replay":
        return replay(os.environ["FAKE_BLENDER_LOG"], options, extension)
    if mode == "no-camera":
        out("Error: Cannot render, no camera")
        out("")
        out("Blender quit")
        return 0
    seconds = float(os.environ.get("FAKE_BLENDER_FRAME_SECONDS", "0.05"))
    start, end = int(options["start"]), int(options["end"])
    fail_frame = int(os.environ.get("FAKE_BLENDER_FAIL_FRAME", str(start)))
    for frame in range(start, end + 1):
        render_frame(frame, seconds)
        if mode == "exit1" and frame == fail_frame:
            out("Error: Render error (Invalid argument) cannot save: '/proc/nope/f_0001.png'")
            return 1
        if mode == "skip-last" and frame == end:
            break
        path = frame_path(options["output"], frame, extension)
        with open(path, "wb") as image:
            image.write(png_bytes(shade=(frame * 37) % 256))
        out(f"Saved: '{path}'")
        out(f" Time: 00:{seconds:05.2f} (Saving: 00:00.01)")
        out("")
    out("")
    out("Blender quit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
