"""What the benchmark scripts share: reading settings, logging, and the processes they start.

Each script stops exactly the processes it started (`STARTED`, in reverse order, at exit or on a
signal), and never touches anything else on the machine.
"""

import os
import signal
import socket
import subprocess
import sys
import time


class RunError(Exception):
    """The run cannot go on (a process did not start, a target misbehaved): stop with this."""


def env(name, default):
    value = os.environ.get(name, "").strip()
    return value if value else default


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes we started, and only those ------------------------------------------------------

STARTED = []  # subprocess.Popen objects, stopped in reverse order at exit


def spawn(args, **kwargs):
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kwargs)
    STARTED.append(process)
    return process


def stop(process, grace=10.0):
    """SIGTERM (nginx: fast shutdown; gateway: graceful drain), then SIGKILL past `grace`;
    returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {process.pid} ignored SIGTERM for {grace}s: SIGKILL")
            process.kill()
            process.wait(timeout=5)
    if process in STARTED:
        STARTED.remove(process)
    return process.returncode


def stop_all():
    for process in reversed(list(STARTED)):
        try:
            stop(process, grace=5.0)
        except Exception as error:  # keep stopping the others
            log(f"could not stop pid {process.pid}: {error}")


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process, what, deadline_s=15.0):
    """Returns once 127.0.0.1:port accepts connections; fails if `process` exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RunError(f"{what} exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RunError(f"{what} did not listen on 127.0.0.1:{port} within {deadline_s}s")
