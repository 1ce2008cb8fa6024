"""The sandbox's inside: isolate this process, then run each hidden test of the model's code in a fresh child.

Started by `sandbox.py` as `python -I -S runner.py` with a clean environment; reads one JSON job on stdin and
writes one JSON result line on stdout. Standard library only: it runs without site-packages.

Isolation, each layer used where the kernel allows it (the result's `isolation` says which were):
- namespaces: a new network namespace (no interface but a down loopback: every connect fails), a new mount
  namespace where every mount is remounted read-only and a fresh tmpfs on /tmp is the empty work directory,
  and a new pid namespace (the test processes see only themselves; killing its init kills them all). As root
  that needs nothing more; otherwise a user namespace comes first (unprivileged user namespaces).
- credentials: as root, tests run as a uid of their own (not nobody: RLIMIT_NPROC counts per uid, so sandboxes
  must not share one) with no groups; always no_new_privs and no capabilities.
- rlimits per test child: CPU seconds, address space, file size, open files, processes, no core files.
- without namespaces: a Python audit hook refuses sockets and writes outside the work directory. It is a
  speed bump, not a wall (ctypes gets around it); the result says `"network": "audit-hook"` then.

The model's code never runs in this process: each test forks a child that loads the code, runs one test and
reports the value it computed; the expected values stay here, and this process compares.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
WORKDIR = "/tmp"
# Imported before privileges are dropped: as root the sandbox uid may not be able to read the interpreter's
# library folder (e.g. under /root), so these are what the code can import there. Elsewhere imports just work.
PRELOAD = ("array", "bisect", "calendar", "cmath", "collections", "collections.abc", "contextlib", "copy",
           "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq",
           "itertools", "math", "numbers", "operator", "pprint", "queue", "random", "re", "socket",
           "statistics", "string", "struct", "textwrap", "threading", "types", "typing", "unicodedata",
           "weakref", "subprocess", "shutil", "tempfile", "pathlib", "ctypes", "urllib.request", "http.client", "encodings.idna")
SANDBOX_UID_BASE = 2_000_000  # root mode: each sandbox runs as SANDBOX_UID_BASE + (its pid mod 1,000,000)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


# ---------------------------------------------------------------------------------------------- isolation


def enter_namespaces(job: dict) -> dict:
    """unshare network, mount and pid namespaces (in a user namespace unless root); what was done, by layer."""
    uid, gid = os.getuid(), os.getgid()
    fallback = {"network": "audit-hook", "filesystem": "audit-hook", "pids": "rlimit"}
    if uid == 0:  # a uid of this sandbox's own, taken before the pid namespace renumbers us
        fallback["sandbox_uid"] = SANDBOX_UID_BASE + os.getpid() % 1_000_000
    if not job["namespaces"]:
        return fallback
    flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID
    try:
        _check(_libc.unshare(flags if uid == 0 else flags | CLONE_NEWUSER), "unshare")
    except OSError as err:
        return {**fallback, "unavailable": str(err)}
    if uid != 0:  # become root of the new user namespace, mapped to our own uid outside
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    return {**fallback, "network": "namespace", "filesystem": "namespace", "pids": "namespace"}


def become_init() -> None:
    """Fork into the new pid namespace: the child is its pid 1 and goes on; this process waits and exits."""
    pid = os.fork()
    if pid == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the server killing us kills the namespace
        return
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def seal_filesystem(tmpfs_mb: int) -> list[str]:
    """Every mount read-only, a fresh /proc and an empty tmpfs on /tmp; returns the mounts left writable."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    left_writable = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        options = fields[5].split(",")
        if "ro" in options:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= _MOUNT_FLAGS.get(option, 0)  # a user namespace may not clear locked flags: keep them
        try:
            _mount(None, target, None, flags)
        except OSError:
            left_writable.append(target)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    return [m for m in left_writable if not m.startswith(("/proc", "/sys", "/dev/pts"))]


def drop_privileges(isolation: dict) -> None:
    """No capabilities, no new privileges; as real root, a uid and gid of this sandbox's own."""
    if "sandbox_uid" in isolation:
        sandbox_id = isolation["sandbox_uid"]
        os.chown(".", sandbox_id, sandbox_id)  # the work directory is theirs
        os.setgroups([])
        os.setresgid(sandbox_id, sandbox_id, sandbox_id)
        os.setresuid(sandbox_id, sandbox_id, sandbox_id)
    elif os.geteuid() == 0:  # root of a user namespace: shed the namespace's capabilities
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        _check(_libc.capset(header, data), "capset")
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # test children may not read this process's memory


def install_audit_hook(isolation: dict) -> None:
    """The fallback layer: refuse sockets and writes outside the work directory inside Python."""
    guard_network = isolation["network"] == "audit-hook"
    guard_files = isolation["filesystem"] == "audit-hook"
    if not (guard_network or guard_files):
        return
    workdir = os.path.realpath(os.getcwd())

    def hook(event: str, args: tuple) -> None:
        if guard_network and event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo"):
            raise PermissionError(f"sandbox: network access is disabled ({event})")
        if guard_files and event == "open" and len(args) > 1 and _writes(args[1]) and isinstance(args[0], str):
            if not os.path.realpath(args[0]).startswith(workdir + os.sep):
                raise PermissionError(f"sandbox: writing outside the work directory is not allowed ({args[0]})")

    sys.addaudithook(hook)


def _writes(mode: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(mode, int) and bool(mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def apply_limits(limits: dict) -> None:
    """The per-test rlimits (soft = hard, so the code cannot raise them)."""
    cpu = max(1, math.ceil(limits["cpu_s"]))
    mem = limits["memory_mb"] << 20
    # CPU: SIGXCPU at the soft limit (a clear reason), SIGKILL a second later if the code catches it.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (("RLIMIT_AS", mem), ("RLIMIT_FSIZE", limits["file_mb"] << 20),
                        ("RLIMIT_NOFILE", limits["open_files"]), ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


# ---------------------------------------------------------------------------------------------- one test


def run_child(code: str, test: dict, result_fd: int) -> None:
    """Inside a test child: load the model's code, run one test, write what it computed to `result_fd`."""
    report, me = {"ok": True}, os.getpid()
    try:
        if test["kind"] == "stdio":
            sys.stdin = io.TextIOWrapper(io.FileIO(0, closefd=False), encoding="utf-8", errors="replace")
            exec(compile(code, "solution.py", "exec"), {"__name__": "__main__"})
        else:
            namespace = {"__name__": "solution"}
            exec(compile(code, "solution.py", "exec"), namespace)
            if test["kind"] == "call":
                value = eval(compile(test["call"], "test", "eval"), namespace)
            else:
                fn = namespace.get(test["fn_name"])
                if fn is None and "Solution" in namespace:
                    fn = getattr(namespace["Solution"](), test["fn_name"], None)
                if fn is None:
                    raise NameError(f"no function named {test['fn_name']!r}")
                value = fn(*test["args"])
            report["value"] = json.dumps(value, default=_jsonish)[:100_000]
    except BaseException as exc:  # everything the code raises, SystemExit included, is this test's failure
        if test["kind"] == "stdio" and isinstance(exc, SystemExit) and exc.code in (None, 0):
            report = {"ok": True}
        else:
            report = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    if os.getpid() != me:  # a process the code forked: only the test child reports
        os._exit(0)
    os.write(result_fd, json.dumps(report).encode()[:200_000])
    os._exit(0)


def _jsonish(value: object) -> object:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def run_test(code: str, test: dict, limits: dict) -> dict:
    """Fork a child for one test, collect its report and output within the limits, judge it."""
    result_r, result_w = os.pipe()
    out_r, out_w = os.pipe()
    stdin_fd = os.memfd_create("stdin")
    os.write(stdin_fd, test.get("stdin", "").encode())
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.dup2(result_w, 3)
            os.closerange(4, 1 << 16)
            apply_limits(limits)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace",
                                          line_buffering=False)
            sys.stderr = sys.stdout
            run_child(code, test, 3)
        finally:
            os._exit(1)
    for fd in (result_w, out_w, stdin_fd):
        os.close(fd)
    report, output, status = collect(pid, result_r, out_r, limits)
    elapsed = time.monotonic() - start
    return {**judge(test, report, output, status, limits), "time_s": round(elapsed, 3)}


def collect(pid: int, result_r: int, out_r: int, limits: dict) -> tuple[bytes, bytes, int | None]:
    """Read the child's report and (capped) output until it exits or the wall-clock limit; kill it after."""
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + limits["wall_s"]
    buffers = {result_r: bytearray(), out_r: bytearray()}
    caps = {result_r: 200_000, out_r: limits["output_bytes"]}
    poller = select.poll()
    for fd in (result_r, out_r, pidfd):
        poller.register(fd, select.POLLIN)
    open_fds = {result_r, out_r}
    status = None
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            if fd == pidfd:
                status = os.waitpid(pid, 0)[1]
                poller.unregister(pidfd)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
            elif len(buffers[fd]) < caps[fd]:
                buffers[fd] += chunk[: caps[fd] - len(buffers[fd])]
        if status is not None and not open_fds:
            break
        if status is not None:  # exited, but a grandchild holds a pipe open: give it a moment, no more
            deadline = min(deadline, time.monotonic() + 0.5)
    kill_all(pid)
    if status is None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped by kill_all
            pass
    for fd in (result_r, out_r, pidfd):
        os.close(fd)
    return bytes(buffers[result_r]), bytes(buffers[out_r]), status


def kill_all(pid: int) -> None:
    """Kill the test child and everything it started (as pid 1 of a namespace: every other process in it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:  # pid 1 inherits orphans: reap them all (zombies count against RLIMIT_NPROC)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def judge(test: dict, report: bytes, output: bytes, status: int | None, limits: dict) -> dict:
    """Pass or fail, with the reason, from what the child reported and how it ended."""
    if status is None:
        return {"passed": False, "reason": f"timed out after {limits['wall_s']:g} s (wall clock)"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = {signal.SIGXCPU: f"CPU time limit of {limits['cpu_s']:g} s", signal.SIGKILL: "killed (CPU or memory limit)",
               signal.SIGXFSZ: f"file size limit of {limits['file_mb']} MB",
               signal.SIGSEGV: "segmentation fault (memory limit?)"}.get(sig, signal.Signals(sig).name)
        return {"passed": False, "reason": f"terminated: {why}"}
    try:
        got, _ = json.JSONDecoder().raw_decode(report.decode("utf-8", "replace"))
    except ValueError:
        return {"passed": False, "reason": "the process ended without reporting a result (os._exit?)"}
    if not got.get("ok"):
        return {"passed": False, "reason": str(got.get("error"))[:600]}
    if test["kind"] == "stdio":
        text = output.decode("utf-8", errors="replace")
        ok = outputs_match(text, test["expected"])
        return {"passed": ok, "reason": None if ok else f"wrong output: expected {_clip(test['expected'])}, "
                                                         f"got {_clip(text)}"}
    try:
        value = json.loads(got.get("value", "null"))
    except ValueError:
        return {"passed": False, "reason": "the result is not JSON"}
    ok = values_match(value, test["expected"])
    return {"passed": ok, "reason": None if ok else f"expected {_clip(json.dumps(test['expected']), False)}, "
                                                     f"got {_clip(got.get('value', ''), False)}"}


def _clip(text: str, quote: bool = True, limit: int = 200) -> str:
    text = repr(text) if quote else text
    return text if len(text) <= limit else text[:limit] + "..."


def values_match(got: object, expected: object) -> bool:
    """Equal JSON values; numbers within 1e-6 (relative above 1); lists element-wise; bools are not numbers."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return got is expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return abs(got - expected) <= 1e-6 * max(1.0, abs(expected))
    if isinstance(expected, list) and isinstance(got, list):
        return len(got) == len(expected) and all(map(values_match, got, expected))
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(values_match(got[k], expected[k]) for k in expected)
    return got == expected


def outputs_match(got: str, expected: str) -> bool:
    """Program output equals the expected text, ignoring trailing whitespace; numbers within 1e-6."""
    got_lines = [line.rstrip() for line in got.rstrip().splitlines()]
    want_lines = [line.rstrip() for line in expected.rstrip().splitlines()]
    if got_lines == want_lines:
        return True
    got_tokens, want_tokens = " ".join(got_lines).split(), " ".join(want_lines).split()
    return len(got_tokens) == len(want_tokens) and all(map(_tokens_match, got_tokens, want_tokens))


def _tokens_match(got: str, want: str) -> bool:
    if got == want:
        return True
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    return math.isfinite(a) and abs(a - b) <= 1e-6 * max(1.0, abs(b))


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    """Read the job, isolate, run every test, print the result."""
    job = json.loads(sys.stdin.buffer.read())
    isolation = enter_namespaces(job)
    if isolation["pids"] == "namespace":
        become_init()
        isolation["writable_mounts"] = seal_filesystem(job["limits"]["tmpfs_mb"])
        if isolation["writable_mounts"]:
            isolation["filesystem"] = "audit-hook"
        os.chdir(WORKDIR)
    else:
        os.chdir(job["workdir"])
    for module in PRELOAD:
        try:
            __import__(module)
        except ImportError:
            pass
    drop_privileges(isolation)
    install_audit_hook(isolation)
    results = [run_test(job["code"], test, job["limits"]) for test in job["tests"]]
    sys.stdout.write(json.dumps({"isolation": isolation, "results": results}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
