"""The TensorBoard sink without a broker: records handed to it directly, event files read
back with TensorBoard's own EventAccumulator, images decoded with Pillow."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from flarestream.consumers.sink import Delivered
from flarestream.consumers.tensorboard_events import encode_png
from flarestream.consumers.tensorboard_sink import TensorBoardSink
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.record import AnalyticsDataType as T
from flarestream.schemas.record import LogWriterName as W
from flarestream.schemas.record import Record

JOB = "job-1"
SENT_AT = 1_700_000_000_123


def record(site: str, tag: str, kind: T, value: Any, step: int | None = None, **kw: Any) -> Record:
    writer = kw.pop("writer", W.TORCH_TB)
    return Record(site, kw.pop("job", JOB), "sender", 0, SENT_AT, tag, kind, value, writer, step,
                  None, kw)  # fmt: skip


def delivered(records: list[Record], start: int = 0, partition: int = 0) -> list[Delivered]:
    return [Delivered("t", partition, start + i, 0, b"", r) for i, r in enumerate(records)]


def open_sink(root: Path, **kw: Any) -> TensorBoardSink:
    sink = TensorBoardSink(root, **kw)
    sink.open()
    return sink


def run(root: Path, *parts: str) -> EventAccumulator:
    acc = EventAccumulator(
        str(root.joinpath(JOB, *parts)),
        size_guidance={"scalars": 0, "tensors": 0, "images": 0},
        purge_orphaned_data=False,
    )
    acc.Reload()
    return acc


def scalars(root: Path, *parts: str) -> dict[str, list[tuple[int, float]]]:
    acc = run(root, *parts)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def texts(root: Path, *parts: str) -> dict[str, list[tuple[int, str]]]:
    acc = run(root, *parts)
    out = {}
    for tag in acc.Tags()["tensors"]:
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"
        events = acc.Tensors(tag)
        out[tag] = [
            (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in events
        ]
    return out


def f32(x: float) -> float:
    return float(np.float32(x))


def all_points(root: Path) -> Counter[tuple[str, str, str, int, float]]:
    """(site, run, tag, step, value) of every scalar event in the job."""
    got: Counter[tuple[str, str, str, int, float]] = Counter()
    for site_dir in (root / JOB).iterdir():
        for d in [site_dir, *(p for p in site_dir.rglob("*") if p.is_dir())]:
            rel = d.relative_to(root / JOB)
            for tag, events in scalars(root, *rel.parts).items():
                got.update((site_dir.name, str(rel), tag, s, v) for s, v in events)
    return got


# -- what each record becomes ------------------------------------------------------------
def test_scalars_keep_step_zero_and_number_missing_steps_per_tag(tmp_path: Path):
    sink = open_sink(tmp_path)
    sink.write(delivered([
        record("site-1", "loss", T.SCALAR, 0.5, 0),
        record("site-1", "loss", T.SCALAR, 0.1, 7),
        record("site-1", "lr", T.SCALAR, 1e-3),
        record("site-1", "lr", T.SCALAR, 2e-3),
        record("site-1", "lr", T.SCALAR, 3),
        record("site-2", "lr", T.SCALAR, float("nan")),
    ]))  # fmt: skip
    assert sink.flush() is None
    site1 = scalars(tmp_path, "site-1")
    assert site1 == {
        "loss": [(0, 0.5), (7, f32(0.1))],
        "lr": [(0, f32(1e-3)), (1, f32(2e-3)), (2, 3.0)],
    }
    [(step, value)] = scalars(tmp_path, "site-2")["lr"]
    assert step == 0 and np.isnan(value)
    assert {e.wall_time for e in run(tmp_path, "site-1").Scalars("loss")} == {SENT_AT / 1000}
    sink.close()


def test_scalars_dicts_go_to_one_subdirectory_per_key_like_torch(tmp_path: Path):
    sink = open_sink(tmp_path)
    sink.write(delivered([
        record("site-1", "train/acc", T.SCALARS, {"top1": 0.5, "top5": 0.75}, 3),
        record("site-1", "metrics", T.METRICS, {"f1": 0.25}, 4, writer=W.MLFLOW),
        record("site-1", "val_loss", T.METRIC, 1.5, 5, writer=W.MLFLOW),
    ]))  # fmt: skip
    sink.flush()
    assert scalars(tmp_path, "site-1", "train_acc_top1") == {"train/acc": [(3, 0.5)]}
    assert scalars(tmp_path, "site-1", "train_acc_top5") == {"train/acc": [(3, 0.75)]}
    assert scalars(tmp_path, "site-1", "metrics_f1") == {"metrics": [(4, 0.25)]}
    assert scalars(tmp_path, "site-1") == {"val_loss": [(5, 1.5)]}
    sink.close()


def test_text_parameters_and_tags_use_the_text_plugin(tmp_path: Path):
    sink = open_sink(tmp_path)
    sink.write(delivered([
        record("site-1", "note", T.TEXT, "**hello** ünïcode", 2),
        record("site-1", "params", T.PARAMETERS, {"lr": 0.01, "opt": "sgd", "amp": True},
               writer=W.MLFLOW),
        record("site-1", "epochs", T.PARAMETER, 10, writer=W.MLFLOW),
        record("site-1", "tags", T.TAGS, {"team": "a", "n": 3}, writer=W.MLFLOW),
        record("site-1", "owner", T.TAG, "bob", writer=W.MLFLOW),
        record("site-1", "log", T.LOG_RECORD, {"level": "INFO", "msg": "hi"}, 1),
        record("site-1", "model", T.MODEL, {"w": [1, 2]}),
        record("site-1", "init", T.INIT_DATA, "x"),
    ]))  # fmt: skip
    assert sink.flush() is None
    assert texts(tmp_path, "site-1") == {
        "note/text_summary": [(2, "**hello** ünïcode")],
        "opt/text_summary": [(0, "sgd")],
        "amp/text_summary": [(0, "true")],
        "team/text_summary": [(0, "a")],
        "n/text_summary": [(0, "3")],
        "owner/text_summary": [(0, "bob")],
        "log/text_summary": [(1, '{"level": "INFO", "msg": "hi"}')],
    }
    assert scalars(tmp_path, "site-1") == {"lr": [(0, f32(0.01))], "epochs": [(0, 10.0)]}
    sink.close()


def decoded(acc: EventAccumulator, tag: str) -> list[tuple[int, np.ndarray]]:
    out = []
    for e in acc.Images(tag):
        pixels = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
        assert (e.height, e.width) == pixels.shape[:2]
        out.append((e.step, pixels))
    return out


def test_images_in_every_layout_become_the_expected_pixels(tmp_path: Path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    levels = np.array([0.0, 0.25, 0.5, 1.0, 1.5, -1.0, np.nan], dtype=np.float32)
    expected_levels = np.array([0, 63, 127, 255, 255, 0, 0], dtype=np.uint8)  # x255, truncated
    index = np.random.default_rng(2).integers(0, len(levels), (3, 4, 6))
    chw = levels[index]
    sink = open_sink(tmp_path)
    rejected = sink.write(delivered([
        record("site-1", "gray", T.IMAGE, gray, 1),
        record("site-1", "rgb", T.IMAGE, rgb, 2),
        record("site-1", "chw", T.IMAGE, chw, 3),
        record("site-1", "square", T.IMAGE, rgb[:3, :3], 4, dataformats="HWC"),
        record("site-1", "bools", T.IMAGE, gray > 100, 5),
    ]))  # fmt: skip
    assert rejected == []
    sink.flush()
    acc = run(tmp_path, "site-1")
    [(step, got)] = decoded(acc, "gray")
    assert step == 1 and np.array_equal(got, gray)
    [(step, got)] = decoded(acc, "rgb")
    assert step == 2 and np.array_equal(got, rgb)
    [(step, got)] = decoded(acc, "chw")
    assert step == 3 and np.array_equal(got, expected_levels[index].transpose(1, 2, 0))
    [(step, got)] = decoded(acc, "square")
    assert step == 4 and np.array_equal(got, rgb[:3, :3])
    [(_, got)] = decoded(acc, "bools")
    assert np.array_equal(got, np.where(gray > 100, 255, 0))
    sink.close()


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_encoding_round_trips_through_pillow(channels: int):
    pixels = np.random.default_rng(channels).integers(0, 256, (7, 9, channels), dtype=np.uint8)
    got = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    assert np.array_equal(got.reshape(7, 9, channels), pixels)


@pytest.mark.parametrize(
    ("site", "job", "kind", "tag", "value", "extra", "why"),
    [
        ("../evil", JOB, T.SCALAR, "loss", 1.0, {}, "site '../evil'"),
        ("a/b", JOB, T.SCALAR, "loss", 1.0, {}, "site 'a/b'"),
        (".hidden", JOB, T.SCALAR, "loss", 1.0, {}, "site '.hidden'"),
        ("tab\there", JOB, T.SCALAR, "loss", 1.0, {}, "site"),
        ("site-1", "..", T.SCALAR, "loss", 1.0, {}, "job id '..'"),
        ("site-1", "x" * 300, T.SCALAR, "loss", 1.0, {}, "longer than 255"),
        ("site-1", JOB, T.SCALARS, "m", {"/../../x": 1.0}, {}, "'..'"),
        ("site-1", JOB, T.IMAGE, "img", np.zeros(5), {}, "2-D"),
        ("site-1", JOB, T.IMAGE, "img", np.zeros((8, 8, 5)), {}, "1-4 channels"),
        ("site-1", JOB, T.IMAGE, "img", np.zeros((3, 8, 8)), {"dataformats": "NCHW"}, "NCHW"),
        ("site-1", JOB, T.IMAGE, "img", [["a"]], {}, "numeric"),
        ("site-1", JOB, T.TEXT, "note", "bad \ud800 text", {}, "note"),
    ],
)
def test_unsafe_names_and_unwritable_values_are_rejected(
    tmp_path: Path, site: str, job: str, kind: T, tag: str, value: Any, extra: dict, why: str
):
    sink = open_sink(tmp_path / "logs")
    bad = record(site, tag, kind, value, 1, job=job, **extra)
    good = record("site-1", "loss", T.SCALAR, 2.0, 1)
    rejections = sink.write(delivered([bad, good]))
    assert [r.delivered.record for r in rejections] == [bad]
    assert why in rejections[0].reason
    sink.flush()
    assert scalars(tmp_path / "logs", "site-1") == {"loss": [(1, 2.0)]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing escaped
    sink.close()


# -- exactly once ---------------------------------------------------------------------------
def test_records_handed_again_after_a_flush_are_not_written_twice(tmp_path: Path):
    batch = delivered([record("site-1", "lr", T.SCALAR, float(i)) for i in range(5)])
    sink = open_sink(tmp_path)
    sink.write(batch[:3])
    sink.flush()
    sink.write(batch)  # the loop resumed from an older commit within the same run
    sink.flush()
    sink.close()
    again = open_sink(tmp_path)  # a new group, or --from-beginning
    again.write(batch)
    again.flush()
    again.close()
    assert scalars(tmp_path, "site-1") == {"lr": [(i, float(i)) for i in range(5)]}


def test_a_failed_run_is_cut_back_to_its_last_flush(tmp_path: Path):
    first = delivered([record("site-1", "lr", T.SCALAR, float(i)) for i in range(4)])
    more = delivered(
        [record("site-1", "lr", T.SCALAR, 10.0 + i) for i in range(3)]
        + [record("site-2", "loss", T.SCALARS, {"a": 1.0}, 1)],  # a new file after the flush
        start=4,
    )
    sink = open_sink(tmp_path)
    sink.write(first)
    sink.flush()
    state = json.loads(sink.state_path.read_text())
    sink.write(more)
    sink.close()  # what the loop does when a later step fails: no state saved
    [(rel, flushed)] = state["files"].items()
    assert (tmp_path / rel).stat().st_size > flushed  # the unflushed events reached the file
    assert (tmp_path / JOB / "site-2").exists()

    again = open_sink(tmp_path)
    assert (tmp_path / rel).stat().st_size == flushed
    assert not list((tmp_path / JOB / "site-2").rglob("events.*"))
    again.write(first + more)
    again.flush()
    again.close()
    assert scalars(tmp_path, "site-1") == {
        "lr": [(i, v) for i, v in enumerate([0, 1, 2, 3, 10, 11, 12])]
    }
    assert scalars(tmp_path, "site-2", "loss_a") == {"loss": [(1, 1.0)]}


CRASHING_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {here!r})
    from test_tensorboard_sink_unit import TensorBoardSink, batch_for_crash
    records = batch_for_crash()
    sink = TensorBoardSink({root!r}, max_open_writers=3)
    sink.open()
    sink.write(records[:{flushed}])
    sink.flush()
    sink.write(records[{flushed}:])
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def batch_for_crash() -> list[Delivered]:
    """Records of 4 sites over 2 partitions, some without a step; with 3 writers open at
    most, writing them evicts and reopens files."""
    records = [
        record(f"site-{i % 4}", f"tag-{i % 3}", T.SCALAR, float(i), None if i % 5 else i)
        for i in range(120)
    ]
    return delivered(records[0::2], partition=0) + delivered(records[1::2], partition=1)


@pytest.mark.parametrize("flushed", [0, 50, 90, 120])
def test_kill_9_after_a_flush_leaves_every_point_once(tmp_path: Path, flushed: int):
    root = tmp_path / "logs"
    script = CRASHING_CHILD.format(here=str(Path(__file__).parent), root=str(root), flushed=flushed)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    records = batch_for_crash()
    sink = open_sink(root, max_open_writers=3)
    sink.write(records)  # the loop hands every record again (nothing was committed)
    sink.flush()
    sink.close()
    reference_root = tmp_path / "reference"
    reference = open_sink(reference_root, max_open_writers=3)
    reference.write(records)
    reference.flush()
    reference.close()
    got, want = all_points(root), all_points(reference_root)
    assert got == want
    assert sum(want.values()) == 120 and max(want.values()) == 1


def test_event_files_without_their_state_are_refused(tmp_path: Path):
    sink = open_sink(tmp_path)
    sink.write(delivered([record("site-1", "loss", T.SCALAR, 1.0, 1)]))
    sink.flush()
    sink.close()
    sink.state_path.unlink()
    with pytest.raises(ConfigError, match=r"state .* is missing"):
        open_sink(tmp_path)
    open_sink(tmp_path, state_name="other").close()  # another state name owns other files


def test_a_second_sink_on_the_same_logdir_and_state_name_is_refused(tmp_path: Path):
    first = open_sink(tmp_path)
    with pytest.raises(ConfigError, match="another tensorboard sink"):
        open_sink(tmp_path)
    open_sink(tmp_path, state_name="second").close()
    first.close()
    open_sink(tmp_path).close()  # the lock goes with the sink


def test_flush_is_safe_when_idle_and_makes_events_visible_before_close(tmp_path: Path):
    sink = TensorBoardSink(tmp_path)
    assert sink.flush() is None  # before open, nothing written
    sink.open()
    assert sink.flush() is None
    sink.write(delivered([record("site-1", "loss", T.SCALAR, 1.0, 1)]))
    sink.flush()
    assert scalars(tmp_path, "site-1") == {"loss": [(1, 1.0)]}  # still open
    sink.write(delivered([record("site-1", "loss", T.SCALAR, 2.0, 2)], start=1))
    sink.flush()
    assert scalars(tmp_path, "site-1") == {"loss": [(1, 1.0), (2, 2.0)]}
    sink.close()


def test_open_writers_are_bounded(tmp_path: Path):
    sink = open_sink(tmp_path, max_open_writers=2)
    for round_ in range(3):
        records = [record(f"site-{i}", "loss", T.SCALAR, float(round_), round_) for i in range(5)]
        sink.write(delivered(records, start=round_ * 5))
        assert len(sink._writers) <= 2
        sink.flush()
    sink.close()
    for i in range(5):
        assert scalars(tmp_path, f"site-{i}") == {"loss": [(r, float(r)) for r in range(3)]}


# -- configuration --------------------------------------------------------------------------
def test_command_line_options_build_the_sink(tmp_path: Path):
    parser = argparse.ArgumentParser()
    TensorBoardSink.add_arguments(parser)
    args = parser.parse_args(["--logdir", str(tmp_path), "--state-name", "tb-2",
                              "--max-open-writers", "8"])  # fmt: skip
    sink = TensorBoardSink.from_args(args)
    assert isinstance(sink, TensorBoardSink)
    assert (sink.logdir, sink.state_name, sink.max_open_writers) == (tmp_path, "tb-2", 8)
    assert sink.describe()["logdir"] == str(tmp_path)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --logdir is required


@pytest.mark.parametrize("kwargs", [{"state_name": "../x"}, {"state_name": ""},
                                    {"max_open_writers": 0}])  # fmt: skip
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict):
    with pytest.raises(ConfigError):
        TensorBoardSink(tmp_path, **kwargs)


def test_importing_the_sink_does_not_import_tensorboard():
    code = (
        "import sys, flarestream.consumers.tensorboard_sink as m; "
        "print(sorted(n for n in ('tensorboard', 'numpy') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_write_before_open_is_an_error(tmp_path: Path):
    with pytest.raises(FlarestreamError, match="before open"):
        TensorBoardSink(tmp_path).write(delivered([record("s", "x", T.SCALAR, 1.0, 1)]))
    assert not os.path.exists(tmp_path / JOB)
