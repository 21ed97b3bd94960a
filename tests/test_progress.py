"""The pure parser and frame tracker, on real Blender output captured on 3.4 and 5.0, and on edge cases."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from rendernode.progress import (
    AppendFrame,
    BlenderError,
    BlenderQuit,
    BlenderWarning,
    FrameTime,
    FrameTracker,
    LineSplitter,
    PythonTraceback,
    ReadBlend,
    RenderStats,
    Saved,
    VersionBanner,
    frame_from_path,
    parse_clock,
    parse_line,
)


def lines_of(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def track(name: str, frames: list[int], step: float = 0.01) -> tuple[FrameTracker, list[dict]]:
    tracker = FrameTracker(frames)
    events = tracker.start(0.0)
    now = 0.0
    for line in lines_of(name):
        now += step
        events += tracker.feed(parse_line(line), now)
    events += tracker.flush(now)
    return tracker, events


def test_every_fixture_parses_without_error() -> None:
    fixtures = sorted(FIXTURES.glob("*.log"))
    assert len(fixtures) >= 12
    for path in fixtures:
        for line in path.read_text().splitlines():
            parse_line(line)


def test_cycles_stats_line() -> None:
    line = (
        "Fra:1 Mem:11.89M (Peak 11.89M) | Time:00:00.07 | Remaining:00:00.34 | Mem:2.74M, Peak:2.74M"
        " | Scene, ViewLayer | Sample 1/16"
    )
    assert parse_line(line) == RenderStats(
        frame=1,
        elapsed=0.07,
        remaining=0.34,
        memory_mb=11.89,
        peak_mb=11.89,
        status="Sample 1/16",
        sample=1,
        samples=16,
        percent=6.25,
    )


def test_cycles_status_with_a_pipe_inside() -> None:
    line = (
        "Fra:1 Mem:9.05M (Peak 10.83M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer"
        " | Synchronizing object | Cube"
    )
    parsed = parse_line(line)
    assert isinstance(parsed, RenderStats)
    assert parsed.status == "Synchronizing object | Cube" and parsed.percent is None


@pytest.mark.parametrize(
    ("status", "sample", "samples", "percent"),
    [
        ("Sample 200/400", 200, 400, 50.0),
        ("Rendered 2/4 Tiles, Sample 8/16", 8, 16, 37.5),
        ("Path Tracing Tile 3/4", None, None, 75.0),
        ("Path Tracing Tile 56/135, Sample 128/128, Denoised 40 tiles", 128, 128, 41.48),
        ("Finished", None, None, 100.0),
        ("Loading render kernels (may take a few minutes the first time)", None, None, None),
    ],
)
def test_cycles_progress_forms(status: str, sample: int | None, samples: int | None, percent: float | None) -> None:
    parsed = parse_line(
        f"Fra:7 Mem:1.00M (Peak 2.00M) | Time:01:02:03.50 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | {status}"
    )
    assert isinstance(parsed, RenderStats)
    assert (parsed.sample, parsed.samples, parsed.percent) == (sample, samples, percent)
    assert parsed.elapsed == 3723.5


def test_eevee_and_workbench_and_28x_forms() -> None:
    eevee = parse_line("Fra:1 Mem:11.63M (Peak 12.75M) | Time:00:06.33 | Rendering 26 / 64 samples")
    assert isinstance(eevee, RenderStats)
    assert (eevee.sample, eevee.samples, eevee.percent, eevee.status) == (26, 64, 40.62, "Rendering 26 / 64 samples")
    syncing = parse_line("Fra:1 Mem:11.62M (Peak 12.75M) | Time:00:01.58 | Syncing Cube")
    assert isinstance(syncing, RenderStats) and syncing.status == "Syncing Cube" and syncing.percent is None
    old = parse_line(
        "Fra:3 Mem:22.41M (0.00M, Peak 22.43M) | Time:00:00.33 | Mem:0.00M, Peak:0.00M"
        " | Scene, RenderLayer | Path Tracing Tile 1/8"
    )
    assert isinstance(old, RenderStats) and (old.frame, old.peak_mb, old.percent) == (3, 22.43, 12.5)


def test_saved_time_and_append_lines() -> None:
    assert parse_line("Saved: '/renders/out/f_0001.png'") == Saved("/renders/out/f_0001.png")
    assert parse_line(" Time: 00:00.60 (Saving: 00:00.24)") == FrameTime(0.6, 0.24)
    assert parse_line("Time: 01:00:00.60 (Saving: 00:00.24)") == FrameTime(3600.6, 0.24)
    assert parse_line("Append frame 12") == AppendFrame(12)
    assert parse_clock("02:03.5") == 123.5


def test_messages_banner_and_quit() -> None:
    assert parse_line("Blender 3.4.1") == VersionBanner("3.4.1", 3, 4)
    assert parse_line("Blender 5.0.0 (hash a37564c4df7a built 2025-11-18)") == VersionBanner("5.0.0", 5, 0)
    assert parse_line("Blender quit") == BlenderQuit()
    assert parse_line("Error: Cannot render, no camera") == BlenderError("Cannot render, no camera")
    assert parse_line("Warning: Unable to open '/x.blend'") == BlenderWarning("Unable to open '/x.blend'")
    assert parse_line("Traceback (most recent call last):") == PythonTraceback()
    assert parse_line("Read blend: /renders/test.blend") == ReadBlend("/renders/test.blend")


def test_blender_5_log_prefix_is_stripped() -> None:
    lines = lines_of("5.0-bpy-module-cycles-frames-1-2.log")
    parsed = [parse_line(line) for line in lines]
    assert parsed == [
        ReadBlend("/renders/test.blend"),
        Saved("/renders/out/f_0001.png"),
        Saved("/renders/out/f_0002.png"),
    ]
    prefixed_stats = parse_line(
        "00:01.020  render           | Fra:1 Mem:11.89M (Peak 11.89M) | Time:00:00.07"
        " | Mem:2.74M, Peak:2.74M | Scene, ViewLayer | Sample 8/16"
    )
    assert isinstance(prefixed_stats, RenderStats) and prefixed_stats.percent == 50.0


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "\x00\x01\x02garbage",
        "Fra:",
        "Fra:x Mem:1M",
        "Fra:1 Mem:9.05M (Peak 10.83M)",
        "Saved: no quotes",
        "Time: soon (Saving: later)",
        "EGL Error (0x3001): EGL_NOT_INITIALIZED",
        "\ufffd\ufffd broken utf-8",
        "Fra:1 " + "x" * 1_000_000,
    ],
)
def test_unknown_and_garbled_lines_are_skipped(junk: str) -> None:
    assert parse_line(junk) is None


def test_line_splitter_survives_megabyte_lines_and_bad_utf8() -> None:
    splitter = LineSplitter(max_line=1024)
    lines = splitter.feed(b"Fra:1 first\npartial")
    lines += splitter.feed(b" line\n" + b"y" * 1_000_000)
    lines += splitter.feed(b"z" * 10 + b"\n\xff\xfebad\nlast")
    lines += splitter.finish()
    assert lines == ["Fra:1 first", "partial line", "\ufffd\ufffdbad", "last"]


def test_frame_from_output_path() -> None:
    assert frame_from_path("/out/job/frame_00012.png") == 12
    assert frame_from_path("/renders/out/f_0001.png") == 1
    assert frame_from_path("C:\\renders\\e_0002.exr") == 2
    assert frame_from_path("/out/noframe.png") is None


def test_tracker_on_real_cycles_log_emits_each_frame_in_order() -> None:
    tracker, events = track("3.4-cycles-frames-1-3.log", [1, 2, 3])
    kinds = [(e["type"], e.get("frame")) for e in events if e["type"] != "frame_progress"]
    assert kinds == [
        ("frame_started", 1),
        ("frame_done", 1),
        ("frame_started", 2),
        ("frame_done", 2),
        ("frame_started", 3),
        ("frame_done", 3),
    ]
    done = [e for e in events if e["type"] == "frame_done"]
    assert done[0]["render_seconds"] == 0.6  # Blender's own " Time:" figure, not our clock
    assert done[0]["path"] == "/renders/out/f_0001.png"
    assert [e["frames_done"] for e in done] == [1, 2, 3]
    assert done[-1]["job_percent"] == 100.0 and done[-1]["eta_seconds"] == 0.0
    assert tracker.last_error is None


def test_tracker_throttles_progress_but_keeps_the_final_sample() -> None:
    _, fast = track("3.4-cycles-400-samples-1-frame.log", [1], step=0.001)
    progress = [e for e in fast if e["type"] == "frame_progress"]
    lines = sum(1 for line in lines_of("3.4-cycles-400-samples-1-frame.log") if line.startswith("Fra:"))
    assert 0 < len(progress) < lines / 5
    assert progress[-1]["percent"] == 100.0
    _, slow = track("3.4-cycles-400-samples-1-frame.log", [1], step=0.2)
    samples = [e["sample"] for e in slow if e["type"] == "frame_progress" and e["sample"]]
    assert samples == sorted(samples) and samples[-1] == 400
    remaining = [e["remaining_seconds"] for e in slow if e["type"] == "frame_progress" and e["remaining_seconds"]]
    assert remaining[0] == 31.4 and remaining == sorted(remaining, reverse=True)


def test_tracker_on_eevee_and_workbench_logs() -> None:
    for name, expected_times in [
        ("3.4-eevee-frames-1-2.log", [7.35, 1.01]),
        ("3.4-workbench-frames-1-2.log", [0.71, 0.07]),
    ]:
        _, events = track(name, [1, 2])
        done = [e for e in events if e["type"] == "frame_done"]
        assert [e["frame"] for e in done] == [1, 2], name
        assert [e["render_seconds"] for e in done] == expected_times, name


def test_tracker_on_blender_5_log_counts_saved_frames() -> None:
    _, events = track("5.0-bpy-module-cycles-frames-1-2.log", [1, 2])
    assert [(e["type"], e["frame"]) for e in events] == [
        ("frame_started", 1),
        ("frame_done", 1),
        ("frame_started", 2),
        ("frame_done", 2),
    ]


def test_tracker_records_errors_and_warnings() -> None:
    tracker, events = track("3.4-error-cannot-save.log", [1])
    assert tracker.last_error == "Render error (Invalid argument) cannot save: '/proc/nope/f_0001.png'"
    assert not [e for e in events if e["type"] == "frame_done"]
    tracker, events = track("3.4-warning-missing-library.log", [1])
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == 2 and warnings[0].startswith("Unable to open")
    assert [e["frame"] for e in events if e["type"] == "frame_done"] == [1]
    for name, error in [
        ("3.4-error-no-camera.log", "Cannot render, no camera"),
        ("3.4-error-missing-file.log", "Cannot read file '/nonexistent/scene.blend': No such file or directory"),
        ("3.4-error-not-a-blend.log", "File format is not supported in file '/renders/bad.blend'"),
        ("3.4-error-unknown-engine.log", "engine not found 'NOPE'"),
        (
            "3.4-error-newer-file-format.log",
            "Failed to read blend file '/scenes/37_lamp_Cycles.blend', not a blend file",
        ),
    ]:
        assert track(name, [1])[0].last_error == error


def test_tracker_resumes_past_frames_already_done() -> None:
    tracker = FrameTracker([1, 2, 3], done={1: 0.5})
    assert tracker.start(0.0) == [{"type": "frame_started", "frame": 2}]
    assert tracker.percent() == pytest.approx(33.33)
    events = tracker.feed(Saved("/o/frame_00002.png"), 1.0) + tracker.feed(FrameTime(0.7, 0.0), 1.0)
    assert [e["type"] for e in events] == ["frame_done", "frame_started"]
    assert tracker.eta_seconds(1.0) == pytest.approx(0.6)  # one frame left at the 0.6 s average


def test_job_percent_blends_the_current_frame() -> None:
    tracker = FrameTracker([1, 2])
    tracker.start(0.0)
    tracker.feed(
        parse_line(
            "Fra:1 Mem:1M (Peak 1M) | Time:00:01.00 | Remaining:00:03.00 | Mem:0M, Peak:0M"
            " | Scene, ViewLayer | Sample 4/16"
        ),
        1.0,
    )
    assert tracker.percent() == 12.5
    # Current frame: 3 s left by Blender's estimate; the next frame is assumed to take as long (4 s).
    assert tracker.eta_seconds(1.0) == 7.0
