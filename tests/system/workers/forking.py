"""One child process a job, forked from a server that has imported TensorFlow once.

A fresh Python that imports TensorFlow takes seconds; a forked child of a process that
has only imported starts as fresh as that, in milliseconds. Both fork servers of the
tests (the crash driver's fine-tuning runs, the fresh-process model loads) use this.
"""

import os
import sys
import traceback


def run_forked(output_path: str, work) -> int:
    """Runs `work()` in a forked child whose stdout and stderr go to `output_path`; returns
    its exit status (0, 1 after an exception, or minus the signal that killed it). The
    child leaves with `os._exit`: no clean-up of the parent's state runs twice."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with open(output_path, "w") as out:
                os.dup2(out.fileno(), 1)  # stdout answers the test, not the child
                os.dup2(out.fileno(), 2)
                work()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
