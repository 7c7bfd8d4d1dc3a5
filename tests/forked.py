"""`subprocess.run` for `python -m cmift ...` without paying the imports again: the command
runs in a fork of this test process, which has torch, transformers, datasets and cmift loaded
already (about 6 of a tiny run's 9 seconds here are imports). The child gets what a new
process would: its own argv, cwd, environment, stdout / stderr files, signal dispositions,
warning filters, torch thread count and file caches; it exits with os._exit, so the
parent's atexit hooks never run in it. The result is a subprocess.CompletedProcess.

A fork is only safe while this process has never run torch with more than one thread (GNU
OpenMP's pool does not survive a fork: the child would hang in its first parallel region), so
the test process keeps one thread (pin_threads), any in-process request for more switches this
module to real subprocesses, and so does CMIFT_TEST_SUBPROCESS=1 (to check both agree). Tests that
signal a live process (Popen) start real processes themselves.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

_FRESH_WARNINGS = list(warnings.filters)
_SAFETY_TIMEOUT = 900  # a hung child fails its test instead of the whole run
# caches that hold what a file or the code's checkout said when first asked (a test may change
# the file between commands); the other cmift caches build classes, which must stay the same
_FILE_CACHES = ("cmift.runs.manifest", "cmift.models.backbones", "cmift.data.tasks")
_threads = {"pinned": False, "max": 1, "fresh": 1, "set": None}


def pin_threads() -> None:
    """One torch thread in this process from now on (call it before any test runs torch:
    conftest's pytest_configure), and a record of anything that asks for more."""
    import torch

    _threads.update(pinned=True, fresh=torch.get_num_threads(), set=torch.set_num_threads)

    def recording_set_num_threads(n: int) -> None:
        _threads["max"] = max(_threads["max"], int(n))
        _threads["set"](n)

    _threads["set"](1)
    torch.set_num_threads = recording_set_num_threads


def _forkable(argv: list[str], kwargs: dict) -> bool:
    if (os.environ.get("CMIFT_TEST_SUBPROCESS") or not _threads["pinned"]
            or _threads["max"] > 1):
        return False
    if len(argv) < 3 or argv[0] != sys.executable or argv[1] not in ("-m", "-c"):
        return False
    if argv[1] == "-m" and not argv[2].split(".")[0] == "cmift":
        return False  # e.g. torch.distributed.run: it starts workers of its own
    return set(kwargs) <= {"cwd", "env", "capture_output", "text", "timeout", "check"}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(argv, **kwargs), forked when argv is `python -m cmift...` or
    `python -c <code>`; otherwise (or when forking is unsafe) a real subprocess."""
    argv = [str(a) for a in argv]
    if not _forkable(argv, kwargs):
        return subprocess.run(argv, **kwargs)
    capture = kwargs.get("capture_output", False)
    timeout = kwargs.get("timeout") or _SAFETY_TIMEOUT
    out, err = (tempfile.TemporaryFile(), tempfile.TemporaryFile()) if capture else (None, None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(argv, kwargs.get("cwd"), kwargs.get("env"), out, err)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(argv, timeout, *_read(out, err, True))
        time.sleep(0.02)
    stdout, stderr = _read(out, err, kwargs.get("text", False))
    result = subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), stdout, stderr)
    if kwargs.get("check"):
        result.check_returncode()
    return result


def _read(out, err, text: bool):
    if out is None:
        return None, None
    values = []
    for f in (out, err):
        f.seek(0)
        data = f.read()
        f.close()
        values.append(data.decode("utf-8", "replace") if text else data)
    return values


def _child(argv, cwd, env, out, err) -> None:
    code = 1
    try:
        if out is not None:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        # fresh Python-level streams on the (new) descriptors: this process's are pytest's
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False),
                                                       line_buffering=True)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False),
                                                       line_buffering=True)
        sys.stdin = open(os.devnull)
        _fresh_process_state(cwd, env)
        code = _main(argv)
    except BaseException:  # noqa: BLE001 - a crash here is the command's crash: report it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _fresh_process_state(cwd, env) -> None:
    if cwd is not None:
        os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.filters[:] = _FRESH_WARNINGS
    import torch

    torch.set_num_threads = _threads["set"]
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else _threads["fresh"])
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    import logging

    for handler in logging.root.handlers[:]:  # pytest's capture handlers
        logging.root.removeHandler(handler)
    for name in _FILE_CACHES:  # caches a new process would not have
        module = sys.modules.get(name)
        for value in list(vars(module).values()) if module else []:
            if callable(getattr(value, "cache_clear", None)) and value.__module__ == name:
                value.cache_clear()
    from cmift import faults

    faults._sent.clear()
    faults._writes.clear()


def _main(argv: list[str]) -> int:
    """Run `-m <module>` or `-c <code>` as the interpreter would; the exit code."""
    import runpy

    try:
        if argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *argv[3:]]
            exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as Python exits on an uncaught Ctrl-C
    return 0
