"""The async :class:`~harness.qemu.monitor.Monitor` called from synchronous code, the way
qemu.qmp keeps its legacy wrapper apart from its async core: the monitor runs on an event loop
in a thread of its own, and every call waits for its result with a deadline.

    >>> qmp = SyncMonitor(Path("qmp.jsonl"), "g1", dead=lambda: None)    # doctest: +SKIP
    >>> qmp.connect("/tmp/hh-1-x/qmp.sock", timeout=15, gone=lambda: None)  # doctest: +SKIP
    >>> qmp.execute("query-status")["status"]                              # doctest: +SKIP
    'prelaunch'
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable

from harness.core.errors import GuestDiedError, WaitTimeout
from harness.qemu.monitor import Monitor, UnplugResult


class SyncMonitor:
    """One QMP connection, its event loop and thread; ``close`` ends all three."""

    def __init__(self, log_path: Path, name: str, *, dead: Callable[[], None]):
        """``dead``: raises if QEMU has exited (so a call that failed says why)."""
        self.log_path, self.name, self._dead = Path(log_path), name, dead
        self.monitor: Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def connect(self, socket_path: str, timeout: float, gone: Callable[[], str | None]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"qmp-{self.name}")
        self._thread.start()
        self.monitor = Monitor(self.log_path)
        self.call(self.monitor.connect(socket_path, timeout=timeout, gone=gone), timeout + 5)

    def call(self, coro, timeout: float, *, closing: bool = False) -> Any:
        """Run ``coro`` on the monitor's loop; its result within ``timeout`` wall seconds."""
        if self._loop is None or (self._closed and not closing):
            coro.close()
            raise GuestDiedError(f"guest {self.name} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            self._dead()
            raise WaitTimeout(f"QMP call did not return within {timeout} s") from None
        except Exception:
            self._dead()
            raise

    @property
    def resets(self) -> int:
        """RESET events QEMU has sent so far (:attr:`Monitor.resets`)."""
        return self.monitor.resets if self.monitor is not None else 0

    def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        return self.call(self.monitor.execute(command, arguments, timeout=timeout), timeout + 5)

    def hmp(self, command_line: str, timeout: float = 30.0) -> str:
        return self.call(self.monitor.hmp(command_line, timeout=timeout), timeout + 5)

    def query_pci(self) -> list[dict]:
        return self.call(self.monitor.query_pci(), 35)

    def device_add(self, driver: str, device_id: str, **props: Any) -> float:
        return self.call(self.monitor.device_add(driver, device_id, **props), 35)

    def device_del(self, device_id: str, timeout: float, grace: float) -> UnplugResult:
        return self.call(self.monitor.device_del(device_id, timeout=timeout, grace=grace),
                         timeout + grace + 15)

    def device_del_all(self, ids: list[str], timeout: float, limit: float) -> list[UnplugResult]:
        return self.call(self.monitor.device_del_all(ids, timeout=timeout, limit=limit),
                         limit + 30)

    def wait_removed(self, device_id: str, timeout: float) -> UnplugResult:
        return self.call(self.monitor.wait_removed(device_id, timeout=timeout), timeout + 15)

    def quit(self) -> None:
        self.call(self.monitor.quit(timeout=3), 4, closing=True)

    def close(self) -> None:
        """Close the connection (best effort), stop the loop, join its thread. Idempotent."""
        self._closed = True
        if self.monitor is not None and self._loop is not None and self._loop.is_running():
            try:
                self.call(self.monitor.close(), 6, closing=True)
            except Exception:
                pass  # QEMU is gone or going: the connection goes with it
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            if not self._loop.is_running():
                self._loop.close()
