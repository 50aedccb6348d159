"""How the command line ends its process: what an exit does for the program still happens
(threads joined, atexit handlers, flushed streams, the status), the interpreter's teardown of
the imported modules does not (dgraph.cli._end_process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A module-level object finalised only by the interpreter's teardown, a non-daemon thread
# that finishes once the process is ending, and an atexit handler: each prints a word.
_WITNESSES = """
import atexit, sys, threading, time

class Teardown:
    def __del__(self):
        print("teardown", flush=True)

witness = Teardown()
atexit.register(lambda: print("atexit", flush=True))

def late():  # ends once the main thread is ending the process, so its word comes last
    main = threading.main_thread().ident
    while True:
        frame, names = sys._current_frames().get(main), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if names & {"_end_process", "_shutdown"}:
            break
        time.sleep(0.01)
    print("thread", flush=True)

threading.Thread(target=late).start()
from dgraph.cli import main, program
"""


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _WITNESSES + code], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=120, check=False)


def test_the_command_line_skips_the_teardown_but_not_threads_atexit_or_output(
        tmp_path: Path) -> None:
    done = _run("sys.argv = ['dgraph', 'schema']\nprogram()\n", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The schema is printed in full (flushed), then the thread ends, then atexit runs.
    assert lines[0] == "{" and '"title": "dgraph spec",' in done.stdout
    assert lines[-2:] == ["thread", "atexit"]
    assert "teardown" not in lines


def test_main_called_with_arguments_returns_and_the_process_ends_as_usual(
        tmp_path: Path) -> None:
    """The witness above does see a teardown where one happens: main(argv) returns."""
    done = _run("code = main(['schema'])\nprint('returned', code)\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-4:] == ["returned 0", "thread", "atexit", "teardown"]


def test_the_exit_status_of_a_failed_command_is_kept(tmp_path: Path) -> None:
    done = _run("sys.argv = ['dgraph', 'validate', '--static', 'no_such_spec']\n"
                "program()\n", tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error[spec-not-found]: spec 'no_such_spec' not found: no "
                                  "such file, and no zoo spec of that name\n")
    assert done.stderr.endswith("1 error: the spec is not valid\n")
    assert done.stdout.splitlines() == ["thread", "atexit"]


def test_a_profiler_still_writes_its_profile(tmp_path: Path) -> None:
    """Under ``python -m cProfile`` the command is not the program: the process ends as
    usual and the profiler writes its file."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", "out.prof", "-m", "dgraph",
                           "validate", "--static", "kd"], cwd=tmp_path, env=env,
                          text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    import pstats

    stats = pstats.Stats(str(tmp_path / "out.prof"))
    assert any(name == "main" and path.endswith("cli.py")
               for path, _, name in stats.stats)
