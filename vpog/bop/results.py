"""BOP 2019 pose results: the CSV the BOP evaluation server accepts, read, written, appended and checked.

Format (bop_toolkit `docs/bop_challenge_2019.md`, `bop_toolkit_lib/inout.py` save_bop_results l.372-404,
load_bop_results l.306-369):

    scene_id,im_id,obj_id,score,R,t,time
    48,1,1,0.95,0.1 0.2 ... (9 numbers, row-major),10.5 -20.1 850.0 (millimetres),0.231

`time` is the wall time, in seconds, spent on the whole image; it must be the same on every row of one
image (`inout.check_consistent_timings` l.407-435 rejects the file otherwise, allowing 1 ms). The file
name is `{method}_{dataset}-{split}.csv` (`inout.parse_result_filename` l.938-986 splits it at the first
`_` and at `-`, so the method name must not contain `_`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEADER = "scene_id,im_id,obj_id,score,R,t,time"
TIME_TOLERANCE_S = 0.001  # inout.check_consistent_timings


@dataclass
class PoseResult:
    """One estimate: object `obj_id` in image (scene_id, im_id) at R [3, 3], t [3] millimetres (model to
    camera), with a confidence `score` and the seconds spent on the whole image."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    time: float

    def __post_init__(self) -> None:
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)

    @property
    def image(self) -> tuple[int, int]:
        return self.scene_id, self.im_id


def result_filename(method: str, dataset: str, split: str) -> str:
    """`{method}_{dataset}-{split}.csv`; a split folder like `test_primesense` is written `test-primesense`
    (split and split type, as the toolkit parses it)."""
    if not method or "_" in method or "," in method:
        raise ValueError(f"method={method!r}: the BOP file name needs a non-empty method name without '_' or ','")
    if "_" in dataset or "-" in dataset:
        raise ValueError(f"dataset name {dataset!r} must not contain '_' or '-' (BOP result file names)")
    return f"{method}_{dataset}-{split.replace('_', '-')}.csv"


def _number(x: float) -> str:
    """Shortest text that reads back to the same float64 (repr), as the toolkit's `str()`."""
    return repr(float(x))


def format_row(r: PoseResult) -> str:
    """One CSV line (without the newline)."""
    for name, value in (("R", r.R), ("t", r.t), ("score", r.score), ("time", r.time)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"result for scene {r.scene_id} image {r.im_id} object {r.obj_id}: {name} is not finite")
    return ",".join([str(int(r.scene_id)), str(int(r.im_id)), str(int(r.obj_id)), _number(r.score),
                     " ".join(_number(v) for v in r.R.reshape(-1)), " ".join(_number(v) for v in r.t),
                     _number(r.time)])


def parse_row(line: str, where: str) -> PoseResult:
    """One CSV line -> PoseResult; ValueError naming `where` (file and line) when it is malformed."""
    elems = line.strip().split(",")
    if len(elems) != 7:
        raise ValueError(f"{where}: expected 7 comma-separated fields ({HEADER}), got {len(elems)}")
    try:
        R = np.array([float(v) for v in elems[4].split()], dtype=np.float64)
        t = np.array([float(v) for v in elems[5].split()], dtype=np.float64)
        if R.size != 9 or t.size != 3:
            raise ValueError(f"R needs 9 numbers and t 3, got {R.size} and {t.size}")
        return PoseResult(int(elems[0]), int(elems[1]), int(elems[2]), float(elems[3]), R.reshape(3, 3), t,
                          float(elems[6]))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_results(path: str | Path) -> list[PoseResult]:
    """Every row of a BOP19 results CSV (the header line is optional, as for the toolkit)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    out = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or (number == 1 and HEADER in line):
                continue
            out.append(parse_row(line, f"{path}, line {number}"))
    return out


def write_results(path: str | Path, results: Iterable[PoseResult]) -> Path:
    """Write a whole results file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(HEADER + "\n")
        for r in results:
            fh.write(format_row(r) + "\n")
    os.replace(tmp, path)
    return path


class ResultsWriter:
    """Append the rows of whole images to a results file, so an interrupted run continues where it stopped.

    Next to `FILE.csv`, `FILE.csv.progress` lists the finished images, one line `scene_id im_id end`
    each, `end` being the CSV's size in bytes after that image's rows. An image's rows are appended and
    flushed, then its progress line; reopening truncates the CSV to the last recorded `end`, so rows of
    an image cut off by a crash (or a half-written row) disappear and that image is estimated again,
    and no row is ever duplicated.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.progress_path = self.path.with_name(self.path.name + ".progress")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[int, int]] = set()
        if self.progress_path.is_file() and self.path.is_file():
            end = self._recover()
        elif self.path.is_file() and self.path.stat().st_size > len(HEADER) + 1:
            raise ValueError(f"{self.path} exists but has no {self.progress_path.name} (it was not written by an "
                             f"interrupted vpog run); choose another out folder or delete the file")
        else:
            self.path.write_text(HEADER + "\n")
            self.progress_path.write_text("")
            end = self.path.stat().st_size
        self._fh = open(self.path, "r+b")
        self._fh.truncate(end)
        self._fh.seek(end)
        self._progress = open(self.progress_path, "a")

    def _recover(self) -> int:
        with open(self.path, "rb") as fh:
            if not fh.read(len(HEADER)).decode("ascii", "replace") == HEADER:
                raise ValueError(f"{self.path} is not a BOP19 results file (its first line is not {HEADER!r}); "
                                 f"choose another out folder or delete it")
        end, size = len(HEADER) + 1, self.path.stat().st_size
        lines = []
        for line in self.progress_path.read_text().split("\n"):
            words = line.split()
            if len(words) != 3 or not all(w.isdigit() for w in words) or int(words[2]) > size:
                break  # the tail cut off by a crash
            lines.append(line)
            self.done.add((int(words[0]), int(words[1])))
            end = int(words[2])
        self.progress_path.write_text("".join(line + "\n" for line in lines))
        return end

    def add_image(self, scene_id: int, im_id: int, rows: list[PoseResult]) -> None:
        """Append all rows of one image (possibly none) and mark the image finished."""
        self._fh.write("".join(format_row(r) + "\n" for r in rows).encode("ascii"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._progress.write(f"{int(scene_id)} {int(im_id)} {self._fh.tell()}\n")
        self._progress.flush()
        self.done.add((int(scene_id), int(im_id)))

    def close(self) -> None:
        for fh in (self._fh, self._progress):
            if not fh.closed:
                fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ResultsCheck:
    """What the toolkit's checker (`inout.check_bop_results`) and the scorer find wrong in a results list."""

    num_results: int = 0
    num_images: int = 0
    inconsistent_times: list[tuple[int, int]] = field(default_factory=list)
    """images whose rows disagree on `time` by more than 1 ms (the toolkit rejects the file)."""
    times_available: bool = True
    """False when a row has no time (< 0), as the toolkit reports it."""
    duplicates: int = 0
    """rows identical in (scene_id, im_id, obj_id, R, t) to an earlier row."""
    non_finite: int = 0

    @property
    def problems(self) -> list[str]:
        out = []
        if self.num_results == 0:
            out.append("empty results")
        for s, i in self.inconsistent_times[:5]:
            out.append(f"the running time for scene {s} and image {i} is not the same for all estimates")
        if len(self.inconsistent_times) > 5:
            out.append(f"... and {len(self.inconsistent_times) - 5} more images with inconsistent times")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate rows (same image, object and pose as an earlier row)")
        if self.non_finite:
            out.append(f"{self.non_finite} rows with a non-finite score, R or t")
        return out

    @property
    def ok(self) -> bool:
        """The toolkit would accept the file (non-empty, consistent times)."""
        return self.num_results > 0 and not self.inconsistent_times


def check_results(results: list[PoseResult]) -> ResultsCheck:
    """Check a results list as the toolkit's `check_bop_results` does (times), plus duplicates."""
    check = ResultsCheck(num_results=len(results))
    times: dict[tuple[int, int], float] = {}
    seen: set[tuple] = set()
    bad_times: dict[tuple[int, int], None] = {}
    for r in results:
        if r.time < 0 or math.isnan(r.time):
            check.times_available = False
        elif r.image in times:
            if abs(times[r.image] - r.time) > TIME_TOLERANCE_S:
                bad_times[r.image] = None
        else:
            times[r.image] = r.time
        if not (np.isfinite(r.R).all() and np.isfinite(r.t).all() and math.isfinite(r.score)):
            check.non_finite += 1
        key = (r.scene_id, r.im_id, r.obj_id, tuple(np.round(r.R, 9).reshape(-1)), tuple(np.round(r.t, 6)))
        if key in seen:
            check.duplicates += 1
        seen.add(key)
    check.inconsistent_times = list(bad_times)
    check.num_images = len({r.image for r in results})
    return check
