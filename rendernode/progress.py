"""Blender's background output, turned into typed lines and per-frame progress.

Everything here is pure: ``parse_line`` maps one line of text to a typed record
(or ``None``), and ``FrameTracker`` folds those records into progress events given
the time they were read. No I/O, no clock reads, nothing imported from the project,
so the whole module is tested on literal captured lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# --- typed lines -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionBanner:
    version: str
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class ReadBlend:
    path: str


@dataclass(frozen=True, slots=True)
class RenderStats:
    """One ``Fra:`` status line: where Blender is within one frame."""

    frame: int
    elapsed: float | None
    remaining: float | None
    memory_mb: float | None
    peak_mb: float | None
    status: str
    sample: int | None = None
    samples: int | None = None
    percent: float | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    path: str


@dataclass(frozen=True, slots=True)
class FrameTime:
    """The `` Time: 00:00.60 (Saving: 00:00.24)`` line that follows ``Saved:``."""

    seconds: float
    saving_seconds: float


@dataclass(frozen=True, slots=True)
class AppendFrame:
    frame: int


@dataclass(frozen=True, slots=True)
class BlenderError:
    message: str


@dataclass(frozen=True, slots=True)
class BlenderWarning:
    message: str


@dataclass(frozen=True, slots=True)
class PythonTraceback:
    pass


@dataclass(frozen=True, slots=True)
class BlenderQuit:
    pass


BlenderLine = (
    VersionBanner
    | ReadBlend
    | RenderStats
    | Saved
    | FrameTime
    | AppendFrame
    | BlenderError
    | BlenderWarning
    | PythonTraceback
    | BlenderQuit
)

# --- parsing -----------------------------------------------------------------

# Lines longer than this are not Blender status lines; they are skipped unparsed.
MAX_PARSED_LINE = 4096

_CLOCK = r"(?:\d+:)?\d+:\d+(?:\.\d+)?"
# Blender 5 prefixes each log line with "<elapsed>  <category> | ".
_LOG_PREFIX = re.compile(r"^\s*" + _CLOCK + r"\s+[\w.]+\s+\|\s?")
_VERSION = re.compile(r"^Blender (\d+)\.(\d+)(?:\.(\d+))?(?:\s|$)")
_READ_BLEND = re.compile(r"^Read blend: [\"']?(.*?)[\"']?$")
_FRA_HEAD = re.compile(r"^Fra:(-?\d+) Mem:([\d.]+)M \((?:[\d.]+M, )?Peak ([\d.]+)M\)$")
_SAVED = re.compile(r"^Saved: [\"'](.*)[\"']$")
_FRAME_TIME = re.compile(r"^\s*Time: (" + _CLOCK + r") \(Saving: (" + _CLOCK + r")\)\s*$")
_APPEND = re.compile(r"^Append frame (-?\d+)")
_SAMPLE = re.compile(r"Sample (\d+)/(\d+)")
_TILES = re.compile(r"(?:Rendered|Path Tracing Tile) (\d+)/(\d+)(?: Tiles)?")
_EEVEE_SAMPLES = re.compile(r"^Rendering (\d+) / (\d+) samples")


def parse_clock(text: str) -> float | None:
    """``01:02:03.5`` / ``02:03.5`` / ``03.5`` → seconds."""
    try:
        parts = [float(p) for p in text.strip().split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def _progress(status: str) -> tuple[int | None, int | None, float | None]:
    """Sample counts and percent of one frame, read from a status text."""
    if status == "Finished":
        return None, None, 100.0
    eevee = _EEVEE_SAMPLES.match(status)
    if eevee:
        done, count = int(eevee[1]), int(eevee[2])
        return done, count, _ratio(done, count)
    sample_match = _SAMPLE.search(status)
    sample = int(sample_match[1]) if sample_match else None
    samples = int(sample_match[2]) if sample_match else None
    tiles = _TILES.search(status)
    if tiles:
        tile, tile_count = int(tiles[1]), int(tiles[2])
        within = sample / samples if sample is not None and samples else 1.0
        return sample, samples, _ratio(max(tile - 1, 0) + within, tile_count)
    if sample is not None and samples:
        return sample, samples, _ratio(sample, samples)
    return None, None, None


def _ratio(part: float, whole: float) -> float | None:
    if whole <= 0:
        return None
    return round(min(max(part / whole, 0.0), 1.0) * 100.0, 2)


def _parse_stats(line: str) -> RenderStats | None:
    fields = line.split(" | ")
    head = _FRA_HEAD.match(fields[0])
    if not head or len(fields) < 2:
        return None
    rest = fields[1:]
    elapsed = remaining = None
    if rest and rest[0].startswith("Time:"):
        elapsed = parse_clock(rest.pop(0)[5:])
    if rest and rest[0].startswith("Remaining:"):
        remaining = parse_clock(rest.pop(0)[10:])
    # Cycles adds its own device memory, then "Scene, ViewLayer"; EEVEE adds neither.
    if rest and rest[0].startswith("Mem:"):
        rest.pop(0)
        if rest and ", " in rest[0]:
            rest.pop(0)
    status = " | ".join(rest).strip()
    sample, samples, percent = _progress(status)
    return RenderStats(
        frame=int(head[1]),
        elapsed=elapsed,
        remaining=remaining,
        memory_mb=float(head[2]),
        peak_mb=float(head[3]),
        status=status,
        sample=sample,
        samples=samples,
        percent=percent,
    )


def parse_line(line: str) -> BlenderLine | None:
    """Classify one line of Blender's output; ``None`` for anything unrecognised."""
    if len(line) > MAX_PARSED_LINE:
        return None
    line = line.rstrip("\r\n")
    prefix = _LOG_PREFIX.match(line)
    if prefix:
        line = line[prefix.end() :]
    if line.startswith("Fra:"):
        return _parse_stats(line)
    if line.startswith("Saved: "):
        saved = _SAVED.match(line)
        return Saved(saved[1]) if saved else None
    if "Time:" in line and "Saving:" in line:
        frame_time = _FRAME_TIME.match(line)
        if frame_time:
            total = parse_clock(frame_time[1])
            saving = parse_clock(frame_time[2])
            if total is not None and saving is not None:
                return FrameTime(total, saving)
        return None
    if line.startswith("Error: "):
        return BlenderError(line[len("Error: ") :].strip())
    if line.startswith("Warning: "):
        return BlenderWarning(line[len("Warning: ") :].strip())
    if line.startswith("Traceback (most recent call last)"):
        return PythonTraceback()
    if line.strip() == "Blender quit":
        return BlenderQuit()
    if line.startswith("Append frame "):
        append = _APPEND.match(line)
        return AppendFrame(int(append[1])) if append else None
    if line.startswith("Read blend: "):
        read = _READ_BLEND.match(line)
        return ReadBlend(read[1]) if read else None
    if line.startswith("Blender "):
        version = _VERSION.match(line)
        if version:
            number = ".".join(g for g in version.groups() if g is not None)
            return VersionBanner(number, int(version[1]), int(version[2]))
    return None


_FRAME_IN_NAME = re.compile(r"(-?\d+)(?:\.[A-Za-z0-9]+)?$")


def frame_from_path(path: str) -> int | None:
    """The frame number Blender wrote into an output file name (``frame_00012.png`` → 12)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    match = _FRAME_IN_NAME.search(name)
    return int(match[1]) if match else None


# --- per-frame state ---------------------------------------------------------

Event = dict[str, Any]

# At most this many frame_progress events a second per job; frame and job events are never held back.
PROGRESS_INTERVAL = 0.1


@dataclass
class FrameTracker:
    """Folds parsed lines of one Blender run into frame events and job-level progress.

    ``frames`` are the frames the job asked for, ``done`` those already saved
    (by an earlier run, for a resumed job). Each ``feed`` returns the events the
    line caused; ``now`` is a monotonic time in seconds supplied by the caller.
    """

    frames: list[int]
    done: dict[int, float] = field(default_factory=dict)
    current: int | None = None
    current_percent: float = 0.0
    current_remaining: float | None = None
    current_started: float | None = None
    current_status: str = ""
    last_error: str | None = None
    _pending_save: tuple[int, str, float] | None = None
    _last_progress_at: float = float("-inf")
    _remaining_frames: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._remaining_frames = [f for f in self.frames if f not in self.done]

    # -- derived figures --
    @property
    def total(self) -> int:
        return len(self.frames)

    @property
    def done_count(self) -> int:
        return len(self.done)

    def percent(self) -> float:
        if not self.frames:
            return 100.0
        within = self.current_percent / 100.0 if self.current is not None else 0.0
        return round(min((self.done_count + within) / self.total, 1.0) * 100.0, 2)

    def eta_seconds(self, now: float) -> float | None:
        """Seconds left for the whole job, from frame times so far and the current frame."""
        left = self.total - self.done_count
        if left <= 0:
            return 0.0
        times = list(self.done.values())
        average = sum(times) / len(times) if times else None
        current_left: float | None = None
        if self.current is not None:
            if self.current_remaining is not None:
                current_left = self.current_remaining
            elif average is not None:
                spent = now - self.current_started if self.current_started is not None else 0.0
                current_left = max(average - spent, 0.0)
        if average is None:
            if current_left is None or self.current_started is None:
                return None
            # No frame finished yet: the current frame's own estimate stands in for all.
            spent = now - self.current_started
            average = spent + current_left
        if current_left is None:
            return round(average * left, 2)
        return round(current_left + average * (left - 1), 2)

    def missing(self) -> list[int]:
        return [f for f in self.frames if f not in self.done]

    # -- folding --
    def start(self, now: float) -> list[Event]:
        """The run has begun: the first frame still to do is now rendering."""
        return self._start_next(now)

    def _start_next(self, now: float) -> list[Event]:
        while self._remaining_frames and self._remaining_frames[0] in self.done:
            self._remaining_frames.pop(0)
        if not self._remaining_frames:
            self.current = None
            return []
        return self._begin(self._remaining_frames[0], now)

    def _begin(self, frame: int, now: float) -> list[Event]:
        self.current = frame
        self.current_percent = 0.0
        self.current_remaining = None
        self.current_started = now
        self.current_status = ""
        return [{"type": "frame_started", "frame": frame}]

    def feed(self, parsed: BlenderLine | None, now: float) -> list[Event]:
        events: list[Event] = []
        if self._pending_save is not None and not isinstance(parsed, Saved):
            events += self._finish_pending(parsed if isinstance(parsed, FrameTime) else None, now)
            if isinstance(parsed, FrameTime):
                return events
        if parsed is None:
            return events
        if isinstance(parsed, RenderStats):
            events += self._stats(parsed, now)
        elif isinstance(parsed, Saved):
            if self._pending_save is not None:
                events += self._finish_pending(None, now)
            frame = frame_from_path(parsed.path)
            if frame is None or frame not in self.frames:
                frame = self.current if self.current is not None else None
            if frame is not None:
                self._pending_save = (frame, parsed.path, now)
        elif isinstance(parsed, AppendFrame):
            self._pending_save = (parsed.frame, "", now)
            events += self._finish_pending(None, now)
        elif isinstance(parsed, BlenderError):
            self.last_error = parsed.message
        elif isinstance(parsed, BlenderWarning):
            events.append({"type": "warning", "message": parsed.message})
        return events

    def flush(self, now: float) -> list[Event]:
        """End of output: a save still waiting for its ``Time:`` line is counted now."""
        return self._finish_pending(None, now) if self._pending_save else []

    def _stats(self, stats: RenderStats, now: float) -> list[Event]:
        events: list[Event] = []
        if stats.frame != self.current and stats.frame in self.frames and stats.frame not in self.done:
            events += self._begin(stats.frame, now)
        if stats.frame != self.current:
            return events
        frame_changed = bool(events)
        if stats.percent is not None:
            self.current_percent = stats.percent
        self.current_remaining = (
            stats.remaining if stats.remaining is not None else (0.0 if stats.percent == 100.0 else None)
        )
        self.current_status = stats.status
        final = stats.percent == 100.0
        if not (frame_changed or final) and now - self._last_progress_at < PROGRESS_INTERVAL:
            return events
        self._last_progress_at = now
        events.append(
            {
                "type": "frame_progress",
                "frame": stats.frame,
                "sample": stats.sample,
                "samples": stats.samples,
                "percent": self.current_percent,
                "remaining_seconds": stats.remaining,
                "memory_mb": stats.memory_mb,
                "peak_memory_mb": stats.peak_mb,
                "status": stats.status,
                "job_percent": self.percent(),
                "eta_seconds": self.eta_seconds(now),
            }
        )
        return events

    def _finish_pending(self, frame_time: FrameTime | None, now: float) -> list[Event]:
        assert self._pending_save is not None
        frame, path, saved_at = self._pending_save
        self._pending_save = None
        if frame in self.done:
            return []
        if frame_time is not None:
            seconds = frame_time.seconds
        elif self.current_started is not None and self.current == frame:
            seconds = saved_at - self.current_started
        else:
            seconds = 0.0
        self.done[frame] = round(seconds, 3)
        event: Event = {
            "type": "frame_done",
            "frame": frame,
            "path": path,
            "render_seconds": round(seconds, 3),
        }
        if self.current == frame:
            self.current = None
        events = [event]
        events += self._start_next(now)
        event["job_percent"] = self.percent()
        event["eta_seconds"] = self.eta_seconds(now)
        event["frames_done"] = self.done_count
        return events


class LineSplitter:
    """Splits a byte stream into text lines without ever holding an unbounded line.

    A line longer than ``max_line`` bytes is dropped whole (it is never a status
    line); invalid UTF-8 is replaced rather than raised.
    """

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._discarding = False

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                self._partial += chunk[start:end]
                lines.append(self._partial.decode("utf-8", "replace"))
            self._partial.clear()
            start = end + 1
        if not self._discarding:
            self._partial += chunk[start:]
            if len(self._partial) > self.max_line:
                self._partial.clear()
                self._discarding = True
        return lines

    def finish(self) -> list[str]:
        """The last line, when the stream ended without a newline."""
        rest = [] if self._discarding or not self._partial else [self._partial.decode("utf-8", "replace")]
        self._partial.clear()
        self._discarding = False
        return rest
