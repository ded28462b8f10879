"""
C{--workers N}: this process binds every listener (TCP, TLS, systemd-activated) before
anything serves, and runs N worker processes that accept on those very sockets
(inherited, adopted with C{adoptStreamPort}; the kernel spreads connections among the
processes accepting on one socket). It serves nothing itself; it supervises:

- a worker that dies is replaced, with one log line;
- SIGHUP reaches every worker; SIGTERM stops them all, each draining for up to
  C{--drain-seconds}, and this process ends once they have;
- systemd hears C{READY=1} once every worker is listening.

Each worker is the ordinary proxy (L{modeltrack.ops.service}) started as
C{twistd -n modeltrack ARGS} with the same arguments, told its number and its
sockets in its environment. Worker 0 also serves the admin listener and runs the index.
The workers log to this process's standard output; under twistd's C{--logfile}, their
lines come through this process, the one writer of that file (it rotates it).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from modeltrack.observe.logs import destination, observer
from modeltrack.ops.process import Signals
from modeltrack.ops.sdnotify import notify
from modeltrack.ops.settings import Settings

log = Logger()

_TWISTD = "from twisted.scripts.twistd import run; run()"
#: A worker that ended is started again after this long (not in a tight loop).
RESTART_SECONDS = 1.0
#: After its drain time, how long a worker has to end before it is killed.
STOP_GRACE_SECONDS = 10.0


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, number: int, ready_fd: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ready_fd = ready_fd
        self.ready = False
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()
        self._partial = b""  # of a log line

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd and b"ready" in data and not self.ready:
            self.ready = True
            self.supervisor.worker_ready(self)
        elif childFD == 1:
            # Whole lines only: lines of several workers must not interleave.
            lines, _, self._partial = (self._partial + data).rpartition(b"\n")
            if lines:
                self.supervisor.log_output.write((lines + b"\n").decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class Supervisor(Service):
    """
    The process that binds the listeners and runs the workers that serve them (see
    the module's docstring); it serves nothing itself.
    """

    def __init__(self, settings: Settings, reactor: Any) -> None:
        self.setName("modeltrack supervisor")
        self.settings = settings
        self._reactor = reactor
        self._ports: list[tuple[str, Any]] = []
        self.workers: dict[int, _Worker] = {}
        self._stopping = False
        self._announced = False
        #: Where the log goes: standard output, or twistd's --logfile.
        self.log_output = destination(settings.log_file)
        self.signals = Signals(reactor, self._forward_sighup, self._stop_reactor, self.log_output)

    def setServiceParent(self, parent: Any) -> None:
        """
        The same log observer as each worker's (see L{ModeltrackService.setServiceParent}).
        """
        parent.setComponent(ILogObserver, observer(self.settings.log_format, self.log_output))
        super().setServiceParent(parent)

    # -- start ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.signals.install()
        self._bind()
        for number in range(self.settings.workers):
            self._spawn(number)

    def _bind(self) -> None:
        """
        Bind every listener now, before the reactor runs; a failure stops start-up with
        one line naming the option. This process never accepts on them.
        """
        wanted = [("--listen", d) for d in self.settings.listen] + [("--listen-tls", d) for d in self.settings.listen_tls]
        if self.settings.admin_listen is not None:
            wanted.append(("--admin-listen", self.settings.admin_listen))
        results: list[Any] = []
        listening = [
            endpoints.serverFromString(self._reactor, description).listen(Factory.forProtocol(Protocol)).addCallbacks(
                lambda port, option=option: (option, port), lambda failure, option=option: (option, failure)
            )
            for option, description in wanted
        ]
        gatherResults(listening).addCallback(results.extend)
        failed = [(option, result) for option, result in results if isinstance(result, Failure)]
        if failed or len(results) != len(wanted):
            for _, port in results:
                if not isinstance(port, Failure):
                    port.stopListening()
            option, failure = failed[0] if failed else ("--listen", None)
            problem = failure.getErrorMessage() if failure is not None else "could not listen"
            sys.stderr.write(f"modeltrack: {option}: {problem}\n")
            raise SystemExit(1)
        for option, port in results:
            port.stopReading()  # the workers accept; this process only holds the socket
            self._ports.append((option, port))

    def _spawn(self, number: int) -> None:
        fds = {port.fileno(): port.fileno() for _, port in self._ports}
        ready_fd = max([2, *fds]) + 1
        inherited = ",".join(f"{option}:{port.fileno()}" for option, port in self._ports if option != "--admin-listen" or number == 0)
        env = {
            key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"  # only this process talks to systemd
        }
        env.update(MODELTRACK_WORKER=str(number), MODELTRACK_INHERITED=inherited, MODELTRACK_READY_FD=str(ready_fd))
        worker = _Worker(self, number, ready_fd)
        self.workers[number] = worker
        # twistd, as this process was started: it logs through the plugin's observer.
        argv = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "modeltrack", *self.settings.argv]
        # Its log lines to this process's standard output, or through this process.
        output: int | str = 1 if self.settings.log_file is None else "r"
        self._reactor.spawnProcess(
            worker, sys.executable, argv, env=env, childFDs={0: "w", 1: output, 2: 2, **fds, ready_fd: "r"}
        )

    # -- running ---------------------------------------------------------------

    def worker_ready(self, worker: _Worker) -> None:
        if self._announced or not all(w.ready for w in self.workers.values()):
            return
        self._announced = True
        notify(b"READY=1\nMAINPID=%d" % os.getpid())
        for option, port in self._ports:
            log.info(
                "modeltrack listening on {address} ({option}) with {workers} workers",
                address=str(port.getHost()), option=option, workers=len(self.workers),
            )

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self._stopping or self.workers.get(worker.number) is not worker:
            return
        log.error(
            "Worker {number} (pid {pid}) ended ({how}); starting another in {seconds} s",
            number=worker.number, pid=worker.pid, how=reason.getErrorMessage(),
            seconds=RESTART_SECONDS,
        )
        self._reactor.callLater(RESTART_SECONDS, self._respawn, worker.number)

    def _respawn(self, number: int) -> None:
        if not self._stopping:
            self._spawn(number)

    def _forward_sighup(self) -> None:
        log.info("SIGHUP: passed on to {n} workers", n=len(self.workers))
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, number: int) -> None:
        for worker in self.workers.values():
            if worker.transport is not None and getattr(worker.transport, "pid", None):
                try:
                    worker.transport.signalProcess(number)
                except OSError:
                    pass  # ended meanwhile

    # -- stop --------------------------------------------------------------------

    def _stop_reactor(self) -> None:
        log.info("SIGTERM: stopping {n} workers", n=len(self.workers))
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        notify(b"STOPPING=1")
        self.signals.restore()
        self._signal_all(signal.SIGTERM)
        for _, port in self._ports:
            port.stopListening()
        ended = DeferredList([worker.ended for worker in self.workers.values()])
        kill = self._reactor.callLater(
            self.settings.drain_seconds + STOP_GRACE_SECONDS, self._signal_all, signal.SIGKILL
        )

        def done(result: object) -> object:
            if kill.active():
                kill.cancel()
            log.info("modeltrack stopped: {n} workers ended", n=len(self.workers))
            return result

        return ended.addBoth(done)
