"""The notebook kernel's own stderr goes to the notebook's log, not to the console.

The kernel process inherits the runner's stderr. Its messages there are not cell outputs
(those reach the log through papermill): start-up warnings, and on Ctrl-C the traceback of a
reply sent on a socket that was already closed ("zmq.error.ZMQError: Socket operation on
non-socket"). Sending them to the log keeps the console to the runner's own lines.
"""
from __future__ import annotations

from pathlib import Path

from jupyter_client.manager import AsyncKernelManager


def logged_kernel_manager(log_path: Path) -> type[AsyncKernelManager]:
    """An AsyncKernelManager class (nbclient's default) whose kernels write stderr to
    `log_path` (appended); pass it to papermill as `kernel_manager_class`."""

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log_path, "ab") as log:  # the child keeps its own copy of the handle
                kw["stderr"] = log
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager
