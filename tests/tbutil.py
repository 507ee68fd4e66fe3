"""Test helpers: read TensorBoard event files with TensorBoard's own reader, and run a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

KEEP_ALL = {"scalars": 0, "tensors": 0, "histograms": 0, "compressedHistograms": 0, "images": 0}


def accumulator(logdir: str | os.PathLike) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance=KEEP_ALL)
    ea.Reload()
    return ea


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    ea = accumulator(logdir)
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def read_texts(logdir: str | os.PathLike) -> dict[str, list[tuple[int, str]]]:
    """Text summaries (stored as string tensors) by tag."""
    ea = accumulator(logdir)
    out = {}
    for tag in ea.Tags()["tensors"]:
        if ea.SummaryMetadata(tag).plugin_data.plugin_name != "text":
            continue
        events = ea.Tensors(tag)
        if events:
            out[tag] = [(e.step, b"".join(e.tensor_proto.string_val).decode("utf-8")) for e in events]
    return out


def read_histograms(logdir: str | os.PathLike) -> dict[str, list[Any]]:
    ea = accumulator(logdir)
    return {tag: ea.Histograms(tag) for tag in ea.Tags()["histograms"]}


def custom_scalar_layout(logdir: str | os.PathLike) -> dict[str, list[list[str]]]:
    """``{chart title: [tags...]}`` of the custom-scalars layout written into ``logdir``."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    ea = accumulator(logdir)
    events = ea.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(events[-1].tensor_proto.string_val[0])  # TensorBoard shows the last one written
    return {chart.title: [t.strip("^$").replace("\\", "") for t in chart.multiline.tag]
            for category in layout.category for chart in category.chart}


def custom_scalar_categories(logdir: str | os.PathLike) -> list[str]:
    """The category titles of the last custom-scalars layout, in order."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(accumulator(logdir).Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return [c.title for c in layout.category]


class TensorBoardServer:
    """A real ``tensorboard --logdir D --host 127.0.0.1 --port 0`` process, stopped on exit."""

    def __init__(self, logdir: str | os.PathLike, timeout: float = 90.0) -> None:
        self.logdir = str(logdir)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "TensorBoardServer":
        self._log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", self.logdir, "--host", "127.0.0.1",
               "--port", "0", "--load_fast", "false", "--reload_interval", "1"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited early: {self._output()[-2000:]}")
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", self._output())
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise TimeoutError(f"tensorboard did not start within {self.timeout}s: {self._output()[-2000:]}")

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def get_json(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def wait_for(self, predicate, what: str) -> Any:
        """Poll until ``predicate()`` returns a truthy value (the server loads event files in the background)."""
        deadline = time.time() + self.timeout
        last_error: Exception | None = None
        while time.time() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # not ready yet
                last_error = exc
            time.sleep(0.5)
        raise TimeoutError(f"tensorboard never served {what} (last error: {last_error})")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def wait_path(path: Path, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.1)
