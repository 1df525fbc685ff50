"""Records under real storage faults: a disk that fills, a directory deleted mid-run, a disk
the kernel turns read-only mid-run, and the export of a damaged record directory.

The servers are recording bestofks in front of the session's vLLM server, sent best-of-8
``/generate`` requests over real HTTP; the faults are real filesystems (a 64 KiB tmpfs, an ext4
image on a loop device forced read-only by an injected filesystem error), so mounting needs
root. ``pytest -s tests/test_record_faults.py -k server`` prints, per fault, what the issue
asks to see: requests answered, records saved and dropped (they add up to the requests), log
lines, and how long recording took to resume once the fault cleared.

A read-only *remount* (``mount -o remount,ro``, of a bind mount or a tmpfs) is refused with
EBUSY while the writer holds its file open: the kernel protects open writers. What turns a busy
filesystem read-only in production is an I/O error under ``errors=remount-ro``, hence the ext4
image and ext4's ``trigger_fs_error``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bestofk.service.records.drops import WARN_EVERY_S
from bestofk.service.records.reader import RecordReader, read_records
from bestofk.service.records.record_file import SYNC_EVERY_S
from bestofk.service.records.recorder import RETRY_MAX_S, Recorder
from bestofk.tooling.procs import ROOT, VENV_BIN, Server, engine_env, start_bestofk
from tests.conftest import CONFIG
from tests.test_records import make, record

TASKS = [json.loads(line) for line in (ROOT / "demo" / "tasks.jsonl").read_text().splitlines()]
FACTORIALS = [t for t in TASKS if t["family"] == "factorial"]


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem for the fault needs root; run the tests as root")


def _run(*cmd: str, ok: tuple[int, ...] = (0,)) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode in ok, f"{' '.join(cmd)}: {out.stdout}{out.stderr}"


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mountpoint``, unmounted afterwards."""
    _need_root()
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        _run("umount", "-l", str(mountpoint))


@dataclass
class Ext4:
    """An ext4 image mounted on a loop device with ``errors=remount-ro``."""

    image: Path
    mountpoint: Path

    def mount(self) -> None:
        _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mountpoint))

    def fail(self) -> None:
        """Inject a filesystem error: the kernel turns the mounted filesystem read-only, open
        files included (what a failing disk does under ``errors=remount-ro``)."""
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(self.mountpoint)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("bestofk test\n")

    def repair(self) -> None:
        """What an operator does: unmount, fsck, mount again (a read-write remount is refused
        after an error)."""
        _run("umount", "-l", str(self.mountpoint))
        _run("e2fsck", "-fy", str(self.image), ok=(0, 1))
        self.mount()


@contextlib.contextmanager
def ext4(tmp: Path) -> Iterator[Ext4]:
    _need_root()
    missing = [t for t in ("mkfs.ext4", "e2fsck", "findmnt") if shutil.which(t) is None]
    if missing or not Path("/dev/loop-control").exists():
        pytest.skip(f"an ext4 loop mount needs {missing or 'loop devices (/dev/loop-control)'}")
    fs = Ext4(tmp / "disk.img", tmp / "disk")
    _run("truncate", "-s", "16M", str(fs.image))
    _run("mkfs.ext4", "-q", str(fs.image))
    fs.mountpoint.mkdir()
    fs.mount()
    try:
        yield fs
    finally:
        _run("umount", "-l", str(fs.mountpoint))


# ---------------------------------------------------------------------------------------------
# A recording server under a fault


@dataclass
class Outcome:
    """What one fault did, as the issue asks to see it."""

    fault: str
    answered: int
    saved: int
    """bestofk_records_written_total."""
    dropped: dict[str, float]
    """bestofk_records_dropped_total by reason, the non-zero ones."""
    on_disk: int
    """Records readable in the directory afterwards (a deletion takes the earlier ones)."""
    log_lines: int
    """Lines the server logged from the fault on (its start-up and access lines aside)."""
    resumed_s: float
    """From the fault clearing (space freed, disk repaired; for a deletion, the deletion) to
    the first record saved after it, as a client sees it (a /verify request's latency and the
    settling poll, 0.1 s, included)."""

    def row(self) -> str:
        dropped = sum(self.dropped.values())
        reasons = ",".join(self.dropped) or "-"
        return (
            f"{self.fault:<22} {self.answered:>8} {self.saved:>6} {dropped:>8.0f} {reasons:<10} "
            f"{self.on_disk:>8} {self.log_lines:>9} {self.resumed_s:>9.2f}"
        )


HEADER = (
    f"{'fault':<22} {'answered':>8} {'saved':>6} {'dropped':>8} {'reason':<10} {'on disk':>8} "
    f"{'log lines':>9} {'resumed s':>9}"
)


class Run:
    """A recording bestofk in front of the session's vLLM server, and what it was sent."""

    def __init__(self, backend: Server, directory: Path, log: Path) -> None:
        env = engine_env(BESTOFK_CONFIG=str(CONFIG))
        self.directory = directory
        self.server = start_bestofk(
            log, "--backend", backend.url, "--record-dir", str(directory), env=env
        )
        self.server.wait_ready(60)
        self.answered = 0
        self.sent = 0
        self._log_mark = 0

    def send(self, n: int, concurrency: int = 4, path: str = "/generate") -> None:
        """``n`` best-of-8 requests, ``concurrency`` at a time; each must answer 200. A
        ``/verify`` ranks 8 given candidates: it is recorded the same, in milliseconds."""

        def one(i: int) -> int:
            task = FACTORIALS[(self.sent + i) % len(FACTORIALS)]
            body: dict[str, object] = {"prompt": task["prompt"], "verifiers": task["verifiers"]}
            if path == "/generate":
                body |= {"k": 8, "sampling": {"temperature": 1.0, "max_tokens": 16}}
            else:
                body["candidates"] = [str(c) for c in range(8)]
            return httpx.post(self.server.url + path, json=body, timeout=120).status_code

        with ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(one, range(n)))
        self.sent += n
        self.answered += codes.count(200)
        assert codes.count(200) == n, f"{codes}\n{self.server.log_tail()}"

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for line in httpx.get(self.server.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("bestofk_records_"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def settled(self) -> dict[str, float]:
        """The counters once the writer has saved or dropped every answered request."""
        deadline = time.monotonic() + 30
        while True:
            values = self.metrics()
            if _saved(values) + sum(_dropped(values).values()) >= self.answered:
                return values
            assert time.monotonic() < deadline, f"the writer is stuck: {values}"
            time.sleep(0.1)

    def healthy(self) -> bool:
        return any(
            v == 1 for k, v in self.metrics().items() if k.startswith("bestofk_records_healthy")
        )

    def health(self) -> httpx.Response:
        return httpx.get(self.server.url + "/health", timeout=10)

    def mark_log(self) -> None:
        self._log_mark = len(self._log())

    def log_since_mark(self) -> list[str]:
        # Uvicorn's access lines are one per request whatever happens to the records.
        return [line for line in self._log()[self._log_mark :] if '" 200' not in line]

    def _log(self) -> list[str]:
        return self.server.log.read_text(errors="replace").splitlines()

    def until_resumed(self, since: float) -> float:
        """Send one request at a time until a record is saved again; seconds since ``since``.
        They are ``/verify`` requests, so the figure is the writer's, not the engine's."""
        saved = _saved(self.settled())
        while True:
            self.send(1, concurrency=1, path="/verify")
            if _saved(self.settled()) > saved:
                return time.monotonic() - since
            assert time.monotonic() - since < 30, f"recording did not resume\n{self.log_tail()}"

    def log_tail(self) -> str:
        return self.server.log_tail()

    def outcome(self, fault: str, resumed_s: float) -> Outcome:
        values = self.settled()
        lines = self.log_since_mark()
        self.server.stop()
        return Outcome(
            fault=fault,
            answered=self.answered,
            saved=int(_saved(values)),
            dropped=_dropped(values),
            on_disk=sum(1 for _ in read_records(self.directory)),
            log_lines=len(lines),
            resumed_s=resumed_s,
        )


def _saved(values: dict[str, float]) -> float:
    return values.get("bestofk_records_written_total", 0.0)


def _dropped(values: dict[str, float]) -> dict[str, float]:
    prefix = 'bestofk_records_dropped_total{reason="'
    return {k[len(prefix) : -2]: v for k, v in values.items() if k.startswith(prefix) and v}


@pytest.fixture(scope="module")
def table() -> Iterator[list[Outcome]]:
    """Every fault's outcome, printed as one table at the end of the module (``-s``)."""
    outcomes: list[Outcome] = []
    yield outcomes
    if outcomes:
        print("\n" + HEADER)
        for outcome in outcomes:
            print(outcome.row())


def _check(outcome: Outcome, log: list[str]) -> None:
    assert outcome.saved + sum(outcome.dropped.values()) == outcome.answered, outcome
    assert not [line for line in log if "Traceback" in line], "\n".join(log)
    assert outcome.resumed_s < RETRY_MAX_S + 10, outcome


def test_server_on_a_disk_that_fills(
    vllm_backend: Server, tmp_path: Path, table: list[Outcome]
) -> None:
    with tmpfs(tmp_path / "small", "64k") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 40_000)  # another tenant's file, freed later
        run = Run(vllm_backend, disk / "records", tmp_path / "bestofk.log")
        try:
            run.mark_log()
            run.send(40)
            values = run.settled()
            assert _dropped(values).get("no_space", 0) > 0, (values, run.log_tail())
            assert not run.healthy()
            health = run.health()
            assert health.status_code == 200 and health.json()["status"] == "ready"
            assert "recording to" in health.json()["detail"]
            assert "no_space" in health.json()["detail"]
            ballast.unlink()
            resumed = run.until_resumed(time.monotonic())
            assert run.healthy() and "recording" not in run.health().json()["detail"]
            log = run.log_since_mark()
            outcome = run.outcome("disk full (64 KiB)", resumed)
        finally:
            run.server.stop()
    table.append(outcome)
    _check(outcome, log)
    assert outcome.on_disk == outcome.saved
    # The first drop, a line per 10 s of outage at most, the drops since the last one, and
    # "resumed" (a loaded machine stretches the outage past 10 s: one line more each 10 s).
    resumed_line = next((line for line in log if "resumed after" in line), None)
    assert resumed_line is not None, "\n".join(log)
    outage = re.search(r"resumed after ([\d.]+) s", resumed_line)
    assert outage is not None, resumed_line
    outage_s = float(outage[1])
    assert outcome.log_lines <= 3 + int(outage_s // WARN_EVERY_S), "\n".join(log)


def test_server_with_its_directory_deleted(
    vllm_backend: Server, tmp_path: Path, table: list[Outcome]
) -> None:
    directory = tmp_path / "records"
    run = Run(vllm_backend, directory, tmp_path / "bestofk.log")
    try:
        run.send(10)
        assert _saved(run.settled()) == 10
        run.mark_log()
        shutil.rmtree(directory)
        deleted = time.monotonic()
        resumed = run.until_resumed(deleted)
        run.send(9)
        log = run.log_since_mark()
        outcome = run.outcome("directory deleted", resumed)
    finally:
        run.server.stop()
    table.append(outcome)
    _check(outcome, log)
    assert outcome.saved == outcome.answered == 20 and not outcome.dropped
    assert outcome.on_disk == 10, "the records after the deletion are in the new directory"
    assert len(log) == 1 and "was deleted while recording" in log[0], log


def test_server_on_a_disk_turned_read_only(
    vllm_backend: Server, tmp_path: Path, table: list[Outcome]
) -> None:
    with ext4(tmp_path) as disk:
        run = Run(vllm_backend, disk.mountpoint / "records", tmp_path / "bestofk.log")
        try:
            run.send(10)
            assert _saved(run.settled()) == 10
            time.sleep(SYNC_EVERY_S + 0.5)  # the writer syncs them: they survive the error
            run.mark_log()
            disk.fail()
            run.send(20)
            values = run.settled()
            assert _dropped(values).get("read_only", 0) > 0, (values, run.log_tail())
            assert not run.healthy()
            assert "read_only" in run.health().json()["detail"]
            disk.repair()
            resumed = run.until_resumed(time.monotonic())
            assert run.healthy()
            log = run.log_since_mark()
            outcome = run.outcome("disk turned read-only", resumed)
        finally:
            run.server.stop()
    table.append(outcome)
    _check(outcome, log)
    assert outcome.on_disk == outcome.saved, "a record counted saved was lost"
    assert outcome.log_lines <= 3, "\n".join(log)
    assert any("resumed" in line for line in log), "\n".join(log)


# ---------------------------------------------------------------------------------------------
# The writer alone, on faults the server tests do not reach


def _submit(recorder: Recorder, ids: range) -> None:
    for i in ids:
        job, result = make(f"q{i}", [("1", True, 1.0), ("2", False, 0.0)], request_id=f"r{i}")
        assert recorder.submit(job, result)


def _wait_saved(recorder: Recorder, n: int) -> None:
    deadline = time.monotonic() + 10
    while recorder.metrics.value("bestofk_records_written_total") < n:
        assert time.monotonic() < deadline, "the writer did not save them"
        time.sleep(0.01)


def test_a_record_file_deleted_under_the_writer_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tmp cleaner deletes the open file; the directory stays: nothing is lost after it."""
    recorder = Recorder(tmp_path)
    recorder.start()
    with caplog.at_level(logging.WARNING, "bestofk.service.records.record_file"):
        try:
            _submit(recorder, range(5))
            _wait_saved(recorder, 5)
            for file in tmp_path.iterdir():
                file.unlink()
            _submit(recorder, range(5, 10))
            _wait_saved(recorder, 10)
        finally:
            recorder.close()
    assert [r.id for r in read_records(tmp_path)] == [f"r{i}" for i in range(5, 10)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "deleted from outside bestofk with 5" in warnings[0]


def test_a_replaced_directory_is_noticed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The directory moved away and a new one made in its place (a volume swapped): the
    records before stay in the old one, the next go to the new one."""
    directory = tmp_path / "records"
    recorder = Recorder(directory)
    recorder.start()
    with caplog.at_level(logging.WARNING, "bestofk.service.records.record_file"):
        try:
            _submit(recorder, range(3))
            _wait_saved(recorder, 3)
            directory.rename(tmp_path / "old")
            directory.mkdir()
            _submit(recorder, range(3, 6))
            _wait_saved(recorder, 6)
        finally:
            recorder.close()
    assert [r.id for r in read_records(tmp_path / "old")] == ["r0", "r1", "r2"]
    assert [r.id for r in read_records(directory)] == ["r3", "r4", "r5"]
    assert ["was replaced while recording" in r.getMessage() for r in caplog.records] == [True]


def test_a_record_over_the_line_cap_is_dropped_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bestofk.service.records.recorder.MAX_RECORD_BYTES", 2000)
    recorder = Recorder(tmp_path)
    recorder.start()
    try:
        job, result = make("q", [("x" * 3000, True, 1.0)])
        recorder.submit(job, result)
        _submit(recorder, range(1))
    finally:
        recorder.close()
    assert recorder.metrics.value("bestofk_records_dropped_total", reason="too_large") == 1
    assert [r.id for r in read_records(tmp_path)] == ["r0"]


# ---------------------------------------------------------------------------------------------
# Reading a damaged directory


def _damaged(directory: Path) -> list[tuple[str, int]]:
    """A record directory with every kind of damage; the (file, line) of each bad line."""
    good = [record(f"{i}+{i}?", (str(2 * i), True, 1.0), ("x", False, 0.0)).to_line()
            for i in range(6)]  # fmt: skip
    directory.mkdir()
    (directory / "records-20250101T000000Z-1-0000.jsonl").write_bytes(
        good[0] + b'{"hello": "world"}\n' + good[1] + b"[1, 2, 3]\n" + good[2]
    )
    (directory / "records-20250101T000001Z-1-0000.jsonl").write_bytes(
        good[3] + os.urandom(300).replace(b"\n", b"") + b"\n" + good[4]
    )
    with (directory / "records-20250101T000002Z-1-0000.jsonl").open("wb") as handle:
        handle.write(b'{"junk": "' + b"y" * (50 * 1024 * 1024) + b'"}\n')
        handle.write(good[5] + good[0][:40])  # a partial last line: a write in progress
    return [("0000.jsonl", 2), ("0000.jsonl", 4), ("000001Z-1-0000.jsonl", 2),
            ("000002Z-1-0000.jsonl", 1)]  # fmt: skip


def test_the_reader_skips_and_counts_what_is_not_a_record(tmp_path: Path) -> None:
    bad = _damaged(tmp_path / "records")
    reader = RecordReader(tmp_path / "records")
    assert [r.prompt for r in reader] == [f"{i}+{i}?" for i in range(6)]
    assert reader.skipped == 4
    where = [(e.file.name, e.line) for e in reader.examples]
    assert all(name.endswith(suffix) for (name, _), (suffix, _) in zip(where, bad, strict=True))
    assert [line for _, line in where] == [line for _, line in bad]
    reasons = [e.reason for e in reader.examples]
    assert reasons[0].startswith("not a record: id")
    assert reasons[1].startswith("not a record (a JSON object")
    assert reasons[2].startswith("not JSON")
    assert "longer than any record" in reasons[3]
    with pytest.raises(Exception, match=r"0000\.jsonl:2: not a record"):
        list(RecordReader(tmp_path / "records", strict=True))


def _bestofk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "bestofk"), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        lambda d, out: ("export", str(d), "--format", "dpo", "--out", str(out)),
        lambda d, out: ("stats", str(d), "--json", "-"),
    ],
    ids=["export", "stats"],
)
def test_export_and_stats_of_a_damaged_directory(
    tmp_path: Path, command: Callable[[Path, Path], tuple[str, ...]]
) -> None:
    _damaged(tmp_path / "records")
    args = command(tmp_path / "records", tmp_path / "dpo.jsonl")
    done = _bestofk(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped 4 line(s) that are not records" in done.stderr
    assert "records-20250101T000001Z-1-0000.jsonl:2: not JSON" in done.stderr
    if args[0] == "export":
        assert "6 dpo rows for 6 prompts from 6 of 6 records" in done.stdout
        assert len((tmp_path / "dpo.jsonl").read_text().splitlines()) == 6
    else:
        assert json.loads(done.stdout)["records"] == 6  # stdout stays the JSON alone
    strict = _bestofk(*args, "--strict")
    assert strict.returncode == 1
    assert "records-20250101T000000Z-1-0000.jsonl:2: not a record" in strict.stderr
