#!/usr/bin/env python3
"""A stand-in Blender for benchmarks: replays a captured Blender 3.4 log, one frame after another.

Each line is written with the wall-clock time of the write appended to
$RENDERNODE_BENCH_STAMPS ("frame key time"), so a benchmark can measure how long
the node takes to turn that line into an event a WebSocket client holds.
$RENDERNODE_BENCH_LINE_SECONDS paces the lines (default 0.02 s);
$RENDERNODE_BENCH_FRAME_SECONDS, when set, replaces the log with a fixed per-frame time.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

LOG = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "3.4-cycles-400-samples-1-frame.log"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def option(argv: list[str], flag: str, default: str = "") -> str:
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv: list[str]) -> int:
    if "--version" in argv:
        print("Blender 3.4.1")
        return 0
    output, start, end = option(argv, "-o"), int(option(argv, "-s", "1")), int(option(argv, "-e", "1"))
    stamps_path = os.environ.get("RENDERNODE_BENCH_STAMPS")
    stamps = open(stamps_path, "a") if stamps_path else None
    pace = float(os.environ.get("RENDERNODE_BENCH_LINE_SECONDS", "0.02"))
    fixed = os.environ.get("RENDERNODE_BENCH_FRAME_SECONDS")
    stats = [line for line in LOG.read_text().splitlines() if line.startswith("Fra:")]
    sample = re.compile(r"Sample (\d+)/")

    def emit(line: str, frame: int, key: str) -> None:
        now = time.time()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if stamps:
            stamps.write(f"{frame} {key} {now}\n")

    emit("Blender 3.4.1", 0, "banner")
    for frame in range(start, end + 1):
        if fixed is not None:
            time.sleep(float(fixed))
        else:
            for line in stats:
                match = sample.search(line)
                emit("Fra:" + str(frame) + line[line.index(" "):], frame, match[1] if match else "status")
                time.sleep(pace)
        path = output.replace("#####", f"{frame:05d}") + ".png"
        with open(path, "wb") as image:
            image.write(PNG)
        emit(f"Saved: '{path}'", frame, "saved")
        spent = float(fixed) if fixed is not None else pace * len(stats)
        emit(f" Time: {int(spent // 60):02d}:{spent % 60:05.2f} (Saving: 00:00.01)", frame, "time")
    emit("Blender quit", 0, "quit")
    if stamps:
        stamps.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
