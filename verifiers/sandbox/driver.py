"""The sandbox driver: runs inside bwrap as PID 1 of the sandbox and never runs candidate code.

It is started by :mod:`bestofk.verifiers.sandbox.process` as ``python3 -I -S -X utf8 -c BOOT JOB_FD
RESULT_FD TESTS_FD MEMORY PROCESSES FILE_BYTES OPEN_FILES CPU_S``, where BOOT unmarshals this
module precompiled, and it imports only builtin modules: every millisecond of its start-up is
paid once per candidate.

Threat model. Everything the candidate's code runs in (the *candidate* process that loads the
code and answers calls, the per-case *io* process, and whatever they fork) is hostile: it may
patch any module, fork, sleep, loop, exhaust memory or descriptors, or kill any process it can
signal. This driver (process D) is the only process that holds RESULT_FD, the pipe the service
reads verdict records from, and it never executes candidate code, so the records are D's word
alone:

- every child closes all descriptors it was not given before it runs anything, so no candidate
  process ever holds RESULT_FD or JOB_FD, and none but the test runner ever holds TESTS_FD;
- the sandbox has no ``/proc`` (no ``/proc/PID/fd`` or ``/proc/PID/mem`` to reopen), and the
  seccomp filter denies ptrace, ``process_vm_*`` and ``pidfd_getfd``, so a candidate cannot
  reach into D's memory or descriptors;
- D is PID 1 of the sandbox's PID namespace, which the kernel shields from signals sent from
  inside it: ``kill(1, SIGKILL)`` and ``kill(-1, SIGKILL)`` from candidate code leave D alive;
- replies from candidate processes are untrusted bytes: framed, size-capped, read with
  deadlines, never unpickled or unmarshalled, and forwarded to the service, which decodes them
  as plain JSON and compares them with expected values the sandbox never sees.

``tests`` mode runs client test code, which contains expected values, so it runs in its own
*test runner* process T, forked before any candidate process exists and fed by its own pipe
(TESTS_FD): candidate processes are forked from D, whose memory never held the tests. T calls
candidate functions through D (which relays to the candidate process), receives plain data
back, and does its asserts in a process the candidate cannot touch except by killing it.
Always-equal objects, patched builtins, ``sys.exit(0)``, ``atexit`` hooks and printed markers
therefore cannot turn into a passing record.

Frames on the internal pipes are an ASCII header line ``kind [arg ...] length`` and ``length``
payload bytes. RESULT_FD carries JSON lines (:class:`Results`), parsed by the service in
:mod:`bestofk.verifiers.sandbox.protocol`. D only ever encodes JSON: it never parses what candidate
processes send beyond a frame header.
"""

from __future__ import annotations

import builtins
import marshal
import os
import resource
import select
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: it costs milliseconds per run
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SIGKILL = 9
SIGNAL_NAMES = {
    4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV",
    15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS",
}  # fmt: skip
MAX_HEADER = 128
MAX_MESSAGE = 4 << 20
"""Cap on one frame from a candidate or test runner (a return value, an exception message)."""
MAX_STDOUT = 1 << 20
"""Cap on one io case's stdout."""
MAX_DEPTH = 64
"""Nesting depth beyond which a return value is reported as opaque."""
INF = float("inf")


class Timeout(Exception):
    """The peer did not answer before the deadline."""


class Dead(Exception):
    """The peer exited or closed its end of the pipe."""


class Malformed(Exception):
    """The peer sent bytes that are not a frame (or a value that is not plain data)."""


# --- values: the candidate's side encodes, the service (and the test runner) decodes ---------

_ESCAPES = {i: f"\\u{i:04x}" for i in (*range(32), *range(0xD800, 0xE000))}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def json_str(text: str) -> str:
    """``text`` as a JSON string literal (lone surrogates escaped, so it encodes as UTF-8)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # the common case, without translate's per-character work
    return '"' + text.translate(_ESCAPES) + '"'


def json_object(fields: dict[str, str | int | None]) -> bytes:
    """A flat JSON object of strings and integers, without importing json."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        rendered = json_str(value) if isinstance(value, str) else str(int(value))
        parts.append(f"{json_str(key)}:{rendered}")
    return ("{" + ",".join(parts) + "}").encode()


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except BaseException:  # a hostile __repr__ only spoils its own answer
        text = "<unprintable>"
    return f"{type(value).__name__}: {text[:200]}"


def encode_value(value: object, depth: int = 0) -> str:
    """A return value as tagged JSON: scalars as themselves, containers as ``[tag, items]``.

    Only exact builtin types are taken apart; anything else (subclasses, always-equal objects)
    becomes ``["repr", "..."]``, which never equals an expected value.
    """
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        try:
            return int.__repr__(value)
        except ValueError:  # more digits than int->str allows
            return '["repr", "int: too many digits"]'
    if type(value) is float:
        if value != value or value in (INF, -INF):
            return f'["float", "{float.__repr__(value)}"]'
        return float.__repr__(value)
    if isinstance(value, str | bytes) and len(value) > MAX_MESSAGE:
        return f'["repr", "{type(value).__name__} of {len(value)} items: too long to return"]'
    if type(value) is str:
        return json_str(value)
    if depth >= MAX_DEPTH:
        return '["repr", "nested too deep"]'
    if isinstance(value, list | tuple | set | frozenset) and type(value) in _CONTAINERS:
        items = ",".join(encode_value(item, depth + 1) for item in value)
        return f'["{_CONTAINERS[type(value)]}", [{items}]]'
    if isinstance(value, dict) and type(value) is dict:
        pairs = ",".join(
            f"[{encode_value(k, depth + 1)},{encode_value(v, depth + 1)}]" for k, v in value.items()
        )
        return f'["dict", [{pairs}]]'
    if type(value) is bytes:
        return f'["bytes", {json_str(value.decode("latin-1"))}]'
    return f'["repr", {json_str(_safe_repr(value))}]'


_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "set"}


class Opaque:
    """A value that was not plain data, known only by its repr; equal to nothing but itself."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"


def decode_value(data: Any, depth: int = 0) -> Any:
    """Invert :func:`encode_value` on ``json.loads`` output; raises Malformed on anything else."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if depth > MAX_DEPTH + 1 or type(data) is not list or len(data) != 2:
        raise Malformed("not a tagged value")
    tag, body = data
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "repr" and type(body) is str:
        return Opaque(body)
    if tag == "bytes" and type(body) is str:
        try:
            return body.encode("latin-1")
        except UnicodeEncodeError:
            raise Malformed("bad bytes") from None
    if type(body) is not list:
        raise Malformed("bad container")
    if tag == "dict":
        result = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise Malformed("bad dict item")
            key = decode_value(pair[0], depth + 1)
            try:
                result[key] = decode_value(pair[1], depth + 1)
            except TypeError:  # an unhashable key: not something encode_value produces
                raise Malformed("bad dict key") from None
        return result
    items = [decode_value(item, depth + 1) for item in body]
    if tag == "list":
        return items
    if tag == "tuple":
        return tuple(items)
    if tag == "set":
        try:
            return set(items)
        except TypeError:
            raise Malformed("bad set item") from None
    raise Malformed(f"unknown tag {tag!r}")


def describe(exc: BaseException, filename: str = "solution.py") -> bytes:
    """An exception as a JSON object: type, message and the line in ``filename`` it came from."""
    try:
        message = str(exc)[:500]
    except BaseException:  # a hostile __str__
        message = "<unprintable>"
    line = None
    if isinstance(exc, SyntaxError):
        message, line = (exc.msg or "")[:500], exc.lineno
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return json_object({"type": type(exc).__name__[:100], "msg": message, "line": line})


# --- framed pipes ------------------------------------------------------------------------------


def send(fd: int, header: str, payload: bytes = b"", deadline: float = INF) -> None:
    """Write one frame; non-blocking descriptors are waited on until ``deadline``."""
    view = memoryview(f"{header} {len(payload)}\n".encode() + payload)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise Timeout from None
            select.select([], [fd], [], None if wait == INF else wait)
            continue
        except OSError:  # EPIPE: the reader is gone
            raise Dead from None
        view = view[written:]


class Channel:
    """Buffered frame reads from one descriptor, each bounded by a deadline and a size cap.

    ``pidfd`` (when given) is the writer's process: its exit ends a wait early instead of
    waiting out the deadline, since a forked grandchild may still hold the pipe open.
    """

    def __init__(self, fd: int, pidfd: int | None = None) -> None:
        self.fd = fd
        self.pidfd = pidfd
        self.buf = bytearray()

    def parse(self, cap: int) -> tuple[list[str], bytes] | None:
        """The next complete frame in the buffer, or None if more bytes are needed."""
        end = self.buf.find(b"\n", 0, MAX_HEADER + 1)
        if end < 0:
            if len(self.buf) > MAX_HEADER:
                raise Malformed("header too long")
            return None
        header = self.buf[:end].decode("ascii", "replace").split(" ")
        try:
            length = int(header.pop())
        except ValueError:
            raise Malformed("bad length") from None
        if not 0 <= length <= cap:
            raise Malformed(f"{length} bytes, more than the {cap >> 20} MiB allowed")
        if len(self.buf) < end + 1 + length:
            return None
        payload = bytes(self.buf[end + 1 : end + 1 + length])
        del self.buf[: end + 1 + length]
        return header, payload

    def fill(self, deadline: float) -> None:
        """Read at least one more byte, or raise Timeout / Dead."""
        watched = [self.fd] if self.pidfd is None else [self.fd, self.pidfd]
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise Timeout
            ready = select.select(watched, [], [], None if wait == INF else wait)[0]
            if self.fd in ready:
                data = os.read(self.fd, 65536)
                if not data:
                    raise Dead
                self.buf += data
                return
            if ready:  # the writer exited and nothing is left in the pipe
                raise Dead

    def recv(self, deadline: float = INF, cap: int = MAX_MESSAGE) -> tuple[list[str], bytes]:
        """The next frame: its header words and payload."""
        while (frame := self.parse(cap)) is None:
            self.fill(deadline)
        return frame


def read_all(fd: int) -> bytes:
    """Everything until EOF (the service closes its end after writing the job)."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


# --- processes -----------------------------------------------------------------------------

ISOLATED = os.getpid() == 1
"""True inside bwrap: each child gets its own process group, and the namespace dies with D."""
_STATUSES: dict[int, int] = {}


def ignore_oserror(call: Callable[..., object], *args: Any) -> None:
    """``call(*args)``, ignoring OSError: the process or descriptor is already gone.

    (``contextlib.suppress`` would cost every run 3 ms of imports.)
    """
    try:
        call(*args)
    except OSError:
        return


def _close_except(keep: tuple[int, ...]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def spawn(keep: tuple[int, ...], target: Callable[..., None], *args: Any) -> int:
    """Fork a child that keeps only stdio and ``keep`` open, runs ``target`` and exits."""
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            if ISOLATED:
                os.setpgid(0, 0)
            _close_except(keep)
            target(*args)
            status = 0
        finally:
            os._exit(status)
    if ISOLATED:  # also here, so that a kill right after the fork hits the group
        ignore_oserror(os.setpgid, pid, pid)
    return pid


def pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (None on kernels before 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def reap() -> None:
    """Collect every exited child; as PID 1, D inherits the candidate's orphans too."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _STATUSES[pid] = status


def finish(pid: int) -> str:
    """Kill ``pid`` and its process group, reap it, and say how it ended."""
    for kill in (os.killpg, os.kill) if ISOLATED else (os.kill,):
        ignore_oserror(kill, pid, SIGKILL)
    try:
        status = os.waitpid(pid, 0)[1]
    except ChildProcessError:
        status = _STATUSES.pop(pid, 0)
    reap()
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {SIGNAL_NAMES.get(-code, f'signal {-code}')}"
    return f"exited with status {code}"


# --- the candidate process: loads the code once, then answers calls ----------------------------


def _candidate_main(code: str, entry: str, requests: int, replies: int) -> None:
    try:
        compiled = compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError) as exc:  # null bytes, deep nesting
        send(replies, "syntax", describe(exc))
        return
    except MemoryError:
        send(replies, "memory")
        return
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compiled, namespace)
    except MemoryError:
        send(replies, "memory")
        return
    except BaseException as exc:
        send(replies, "exception", describe(exc))
        return
    if entry and not callable(namespace.get(entry)):
        send(replies, "noentry")
        return
    names = [k for k, v in namespace.items() if type(k) is str and k[:1] != "_" and callable(v)]
    send(replies, "load", "\n".join(names).encode())
    channel = Channel(requests)
    while True:
        try:
            _, payload = channel.recv()
        except (Dead, Malformed):
            return
        name, args, kwargs = marshal.loads(payload)  # from D or T: trusted
        try:
            body = encode_value(namespace[name](*args, **kwargs)).encode()
            kind = "ok"
        except MemoryError:
            kind, body = "memory", b""
        except BaseException as exc:
            kind, body = "exception", describe(exc)
        send(replies, kind, body)


class Candidate:
    """D's handle on the candidate process."""

    def __init__(self, code: str, entry: str) -> None:
        requests_r, self.requests = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            self.pid = spawn(
                (requests_r, replies_w), _candidate_main, code, entry, requests_r, replies_w
            )
        except OSError:  # EAGAIN: escaped processes hold the whole process limit
            for fd in (self.requests, replies_r):
                os.close(fd)
            raise
        finally:
            os.close(requests_r)
            os.close(replies_w)
        os.set_blocking(self.requests, False)
        self.replies = Channel(replies_r, pidfd(self.pid))
        self.names = b""

    @classmethod
    def start(
        cls, code: str, entry: str, deadline: float
    ) -> tuple[Candidate | None, tuple[str, bytes] | None]:
        """A loaded candidate process, or the status and payload every test then gets."""
        try:
            candidate = cls(code, entry)
        except OSError as exc:
            return None, ("crash", json_object({"msg": f"could not start: {exc}"}))
        failure = candidate.load(deadline)
        return (None, failure) if failure is not None else (candidate, None)

    def load(self, deadline: float) -> tuple[str, bytes] | None:
        """None once loaded, else the status and payload that every test then gets."""
        try:
            header, payload = self.replies.recv(deadline)
        except Timeout:
            self.close()
            return "timeout", json_object({"msg": "timed out while loading the code"})
        except (Dead, Malformed):
            return "crash", json_object({"msg": f"crashed while loading: {self.close()}"})
        kind = header[0]
        if kind == "load":
            self.names = payload
            return None
        self.close()
        if kind == "noentry":
            return "noentry", b""
        if kind in ("syntax", "exception", "memory"):
            return kind, payload
        return "crash", json_object({"msg": "sent a malformed reply while loading"})

    def call(self, request: bytes, deadline: float) -> tuple[str, bytes, bool]:
        """Status and payload of one call, and whether the process is still usable."""
        try:
            send(self.requests, "call", request, deadline)
            header, payload = self.replies.recv(deadline)
        except Timeout:
            self.close()
            return "timeout", b"", False
        except Malformed as exc:
            self.close()
            return "crash", json_object({"msg": f"sent a malformed reply: {exc}"}), False
        except Dead:
            return "crash", json_object({"msg": self.close()}), False
        kind = header[0]
        if kind in ("ok", "exception"):
            return kind, payload, True
        self.close()
        if kind == "memory":
            return "memory", b"", False
        return "crash", json_object({"msg": f"sent a malformed reply: {kind[:20]!r}"}), False

    def close(self) -> str:
        """Kill the process and everything in its group; how it ended."""
        how = finish(self.pid)
        for fd in (self.requests, self.replies.fd, self.replies.pidfd):
            if fd is not None:
                ignore_oserror(os.close, fd)
        return how


# --- D: the three modes ----------------------------------------------------------------------


class Results:
    """D's records to the service, one JSON object per line; see
    :mod:`bestofk.verifiers.sandbox.protocol`. Only D ever holds this pipe."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.count = 0

    def _write(self, fields: dict[str, str | int | None]) -> None:
        view = memoryview(json_object(fields) + b"\n")
        while view:
            view = view[os.write(self.fd, view) :]

    def test(self, index: int, status: str, payload: bytes, started: float) -> None:
        """One test's record: its status and the payload (value, stdout or details)."""
        micros = int((time.monotonic() - started) * 1e6)
        data = payload.decode("utf-8", "replace")
        self._write({"t": "test", "i": index, "status": status, "us": micros, "data": data})
        self.count += 1

    def skip(self, index: int) -> None:
        """A test the run's time budget left no time for."""
        msg = "not run: the run's time budget was spent"
        self.test(index, "skipped", json_object({"msg": msg}), time.monotonic())

    def names(self, names: bytes) -> None:
        """Tests mode: the test functions' names, one per line, before their records."""
        self._write({"t": "names", "names": names.decode("utf-8", "replace")})

    def fatal(self, info: bytes) -> None:
        """Tests mode: the tests could not run at all (info is a JSON object)."""
        self._write({"t": "fatal", "data": info.decode("utf-8", "replace")})

    def done(self) -> None:
        """The completion record: without it the service counts nothing."""
        self._write({"t": "done", "n": self.count})


def run_calls(job: dict[str, Any], out: Results) -> None:
    """``cases`` mode: call the entry point with each case's arguments in one candidate process."""
    entry, timeout = job["entry"], job["timeout"]
    candidate: Candidate | None = None
    failure: tuple[str, bytes] | None = None
    for index, (args, kwargs) in enumerate(job["calls"]):
        started = time.monotonic()
        if started >= out.deadline:
            out.skip(index)
            continue
        deadline = min(started + timeout, out.deadline)
        if candidate is None and failure is None:
            candidate, failure = Candidate.start(job["code"], entry, deadline)
        if failure is not None or candidate is None:
            out.test(index, *(failure or ("crash", b"")), started)
            continue
        status, payload, usable = candidate.call(marshal.dumps((entry, args, kwargs)), deadline)
        if not usable:
            candidate = None
        out.test(index, status, payload, started)
        reap()
    if candidate is not None:
        candidate.close()


def _io_main(code: str, stdin: str, stdout_fd: int, status_fd: int) -> None:
    memfd = os.memfd_create("stdin")
    data = stdin.encode("utf-8", "surrogatepass")
    while data:
        data = data[os.write(memfd, data) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    os.dup2(memfd, 0)
    os.dup2(stdout_fd, 1)
    os.close(memfd)
    os.close(stdout_fd)
    try:
        compiled = compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError) as exc:
        send(status_fd, "syntax", describe(exc))
        return
    kind, payload = "ok", b""
    try:
        exec(compiled, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as exc:
        if exc.code not in (None, 0):
            kind, payload = "exception", describe(exc)
    except MemoryError:
        kind = "memory"
    except BaseException as exc:
        kind, payload = "exception", describe(exc)
    try:
        sys.stdout.flush()
    except BaseException as exc:  # the code closed or replaced stdout: its output is lost
        if kind == "ok":
            kind, payload = "exception", describe(exc)
    send(status_fd, kind, payload)


def _read_io(
    stdout_r: int, status: Channel, deadline: float
) -> tuple[str, bytearray, tuple[list[str], bytes] | None]:
    """Read one io process's stdout while waiting for its status frame.

    Returns ``("ok" | "timeout" | "output", stdout, frame)``; no frame if it exited without one.
    """
    stdout = bytearray()
    watched = [stdout_r, status.fd] + ([status.pidfd] if status.pidfd is not None else [])
    frame = None
    while frame is None:
        wait = deadline - time.monotonic()
        if wait <= 0:
            return "timeout", stdout, None
        ready = select.select(watched, [], [], wait)[0]
        if stdout_r in ready:
            data = os.read(stdout_r, 65536)
            stdout += data
            if not data:
                watched.remove(stdout_r)
            elif len(stdout) > MAX_STDOUT:
                return "output", stdout, None
            continue
        if status.fd in ready:
            data = os.read(status.fd, 65536)
            if not data:
                break
            status.buf += data
            try:
                frame = status.parse(MAX_MESSAGE)
            except Malformed:
                break
            continue
        if ready:  # exited, with nothing left to read
            break
    os.set_blocking(stdout_r, False)
    try:
        while len(stdout) <= MAX_STDOUT and (data := os.read(stdout_r, 65536)):
            stdout += data
    except BlockingIOError:
        pass  # a forked grandchild still holds the pipe; what was written is all we take
    return "ok", stdout, frame


def _collect_io(pid: int, stdout_r: int, status: Channel, deadline: float) -> tuple[str, bytes]:
    """One io case's status and payload; the process is killed and reaped."""
    state, stdout, frame = _read_io(stdout_r, status, deadline)
    how = finish(pid)
    if state == "timeout":
        return "timeout", b""
    if state == "output" or len(stdout) > MAX_STDOUT:
        return "output", json_object({"msg": f"stdout exceeded {MAX_STDOUT >> 20} MiB"})
    if frame is None:
        if how == "exited with status 0":  # os._exit(0): what it printed still counts
            return "ok", bytes(stdout)
        return "crash", json_object({"msg": how})
    kind = frame[0][0]
    if kind == "ok":
        return "ok", bytes(stdout)
    if kind in ("syntax", "exception", "memory"):
        return kind, frame[1]
    return "crash", json_object({"msg": "sent a malformed status"})


def run_io(job: dict[str, Any], out: Results) -> None:
    """``io`` mode: run the code as ``__main__`` once per case, stdin in, stdout captured."""
    for index, stdin in enumerate(job["stdin"]):
        started = time.monotonic()
        if started >= out.deadline:
            out.skip(index)
            continue
        stdout_r, stdout_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            pid = spawn((stdout_w, status_w), _io_main, job["code"], stdin, stdout_w, status_w)
        except OSError as exc:  # EAGAIN: escaped processes hold the whole process limit
            for fd in (stdout_r, stdout_w, status_r, status_w):
                os.close(fd)
            out.test(index, "crash", json_object({"msg": f"could not start: {exc}"}), started)
            continue
        os.close(stdout_w)
        os.close(status_w)
        status = Channel(status_r, pidfd(pid))
        deadline = min(started + job["timeout"], out.deadline)
        result = _collect_io(pid, stdout_r, status, deadline)
        for done_fd in (stdout_r, status_r, status.pidfd):
            if done_fd is not None:
                os.close(done_fd)
        out.test(index, *result, started)


class _Abort(BaseException):
    """Ends a test from inside a call: the candidate timed out, ran out of memory or died."""

    def __init__(self, status: str, payload: bytes) -> None:
        super().__init__(status)
        self.status, self.payload = status, payload


def _runner_main(tests_fd: int, to_driver: int, from_driver: int) -> None:
    import json  # only the test runner decodes JSON, so only tests mode pays for the import

    source = read_all(tests_fd).decode("utf-8", "surrogatepass")
    channel = Channel(from_driver)
    names = channel.recv()[1].decode().split("\n")

    def proxy(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                request = marshal.dumps((name, args, kwargs))
            except ValueError:
                raise TypeError(f"arguments to {name}() must be plain data") from None
            send(to_driver, "call", request)
            header, payload = channel.recv()
            if header[0] not in ("ok", "exception"):
                raise _Abort(header[0], payload)
            try:
                data = json.loads(payload)
                if header[0] == "ok":
                    return decode_value(data)
            except (ValueError, RecursionError, Malformed):  # not the JSON we expect
                raise _Abort("crash", json_object({"msg": "malformed result"})) from None
            info = data if type(data) is dict else {}
            kind = getattr(builtins, str(info.get("type")), None)
            if isinstance(kind, type) and issubclass(kind, Exception):
                raise kind(info.get("msg", ""))  # so `except ValueError:` in a test works
            raise RuntimeError(f"{info.get('type')}: {info.get('msg', '')}")

        call.__name__ = call.__qualname__ = name
        return call

    namespace: dict[str, Any] = {"__name__": "tests", "__builtins__": builtins}
    namespace.update({name: proxy(name) for name in names if name})
    try:
        exec(compile(source, "tests.py", "exec"), namespace)
    except BaseException as exc:
        send(to_driver, "fatal", describe(exc, "tests.py"))
        return
    tests = [
        k for k, v in namespace.items() if type(k) is str and k.startswith("test_") and callable(v)
    ]
    tests = [name for name in tests if name.isidentifier()]  # names travel in frame headers
    send(to_driver, "tests", "\n".join(tests).encode())
    lines = source.splitlines()
    for index, name in enumerate(tests):
        send(to_driver, f"begin {index}")
        status, info = "ok", b"{}"
        try:
            namespace[name]()
        except _Abort as abort:
            status, info = abort.status, abort.payload
        except AssertionError as exc:
            status, info = "fail", describe(exc, "tests.py")
            line = json.loads(info).get("line")
            if not str(exc) and line and 0 < line <= len(lines):
                msg = lines[line - 1].strip()
                info = json_object({"type": "AssertionError", "msg": msg, "line": line})
        except MemoryError:
            status = "memory"
        except BaseException as exc:
            status, info = "exception", describe(exc, "tests.py")
        send(to_driver, f"end {index} {status}", info)
    send(to_driver, "done")


def run_tests(job: dict[str, Any], out: Results, tests_fd: int) -> None:
    """``tests`` mode: T runs the client's test_* functions; D relays their calls."""
    to_driver_r, to_driver_w = os.pipe()
    from_driver_r, from_driver = os.pipe()
    runner = spawn(
        (tests_fd, to_driver_w, from_driver_r), _runner_main, tests_fd, to_driver_w, from_driver_r
    )
    for fd in (tests_fd, to_driver_w, from_driver_r):
        os.close(fd)  # from here on D holds no tests: candidates forked later cannot find them
    os.set_blocking(from_driver, False)
    runner_channel = Channel(to_driver_r, pidfd(runner))
    timeout, started = job["timeout"], time.monotonic()
    candidate, failure = Candidate.start(job["code"], "", min(started + timeout, out.deadline))
    tests: list[str] = []
    current, test_started, test_deadline = -1, started, out.deadline
    try:
        send(from_driver, "names", candidate.names if candidate else b"", out.deadline)
        header, payload = runner_channel.recv(out.deadline)
        if header[0] != "tests":
            out.fatal(failure[1] if failure else payload)
            return
        tests = payload.decode().split("\n") if payload else []
        out.names(payload)
        if failure is not None:
            for index in range(len(tests)):
                out.test(index, *failure, started)
            return
        while True:
            header, payload = runner_channel.recv(test_deadline)
            if header[0] == "begin":
                current, test_started = int(header[1]), time.monotonic()
                test_deadline = min(test_started + timeout, out.deadline)
            elif header[0] == "call":
                if candidate is None:
                    candidate, reload = Candidate.start(job["code"], "", test_deadline)
                    if reload is not None or candidate is None:
                        send(from_driver, *(reload or ("crash", b"")), test_deadline)
                        continue
                status, reply, usable = candidate.call(payload, test_deadline)
                if not usable:
                    candidate = None
                send(from_driver, status, reply, test_deadline)
                reap()
            elif header[0] == "end" and int(header[1]) == current == out.count:
                out.test(current, header[2], payload, test_started)
                current, test_deadline = -1, out.deadline
            elif header[0] == "done" and out.count == len(tests):
                return
            else:
                raise Malformed("unexpected frame from the test runner")
    except (Timeout, Dead, Malformed, ValueError, IndexError) as exc:
        how = "timed out" if isinstance(exc, Timeout) else f"the test runner {finish(runner)}"
        if not tests:
            out.fatal(json_object({"msg": f"{how} before listing its tests"}))
        for index in range(out.count, len(tests)):
            if index == current:
                status = "timeout" if isinstance(exc, Timeout) else "crash"
                out.test(index, status, json_object({"msg": how}), test_started)
            else:
                out.skip(index)
    finally:
        finish(runner)
        if candidate is not None:
            candidate.close()


def main(argv: list[str]) -> None:
    """Set the limits, read the job, run it, and write the records and the completion record."""
    job_fd, result_fd, tests_fd, memory, processes, file_bytes, open_files, cpu_s = map(int, argv)
    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CPU, cpu_s),
    ):
        resource.setrlimit(limit, (value, value))
    raw = read_all(job_fd)  # a warm sandbox waits here for its job
    if not raw:
        return  # the service closed the pool before this sandbox got a job
    job = marshal.loads(raw)  # written by the service: trusted
    cpu = min(cpu_s, int(job["budget"]) + 2)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    out = Results(result_fd, time.monotonic() + job["budget"])
    if job["mode"] == "tests":
        run_tests(job, out, tests_fd)
    else:
        os.close(tests_fd)
        (run_calls if job["mode"] == "call" else run_io)(job, out)
    out.done()


if __name__ == "__main__":
    main(sys.argv[1:])
