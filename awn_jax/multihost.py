"""Several processes, one run: starting JAX's multi-controller runtime and keeping the processes in step.

Every process runs the same program on its own devices; collectives (gradient
all-reduce, BatchNorm statistics) span the devices of all of them. Decisions that
one process makes alone (to stop on SIGTERM, to refuse a workdir) are agreed on
before they are acted upon, so no process waits forever in a collective that the
others never enter. When a process dies, the others' next collective fails at once
(CPU: Gloo's connection is reset) or, if they wait elsewhere, the coordination
service declares the run failed after ``timeout_s`` without its heartbeats.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time

import jax
import numpy as np

__all__ = ["DistributedError", "Launch", "initialize", "joined", "is_primary", "all_agree", "any_process",
           "broadcast_int", "free_port"]

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class DistributedError(RuntimeError):
    """The processes of a run could not start together or lost one another; the message says why."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a multi-process run (``jax.distributed.initialize``'s arguments).

    Attributes:
      coordinator_address: ``HOST:PORT`` of process 0's coordination service (None: auto-detect).
      num_processes: processes in the run (None: auto-detect).
      process_id: this process's index in ``[0, num_processes)`` (None: auto-detect).
      auto: join a cluster that JAX detects by itself (TPU pod, SLURM, MPI, Kubernetes)
        when no explicit argument is given.
      timeout_s: seconds to wait for the coordinator and all processes at start, and
        for a silent process's heartbeat before the run is declared failed.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    timeout_s: int = 120

    @property
    def explicit(self) -> bool:
        """Whether any of the three arguments is given (then all must be)."""
        return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))

    @property
    def requested(self) -> bool:
        """Whether this process joins a multi-process run at all."""
        return self.explicit or self.auto

    def check(self) -> None:
        """Checks that the arguments can describe one process of a run.

        Raises:
          DistributedError: which argument is wrong, and how to fix it.
        """
        if self.timeout_s < 1:
            raise DistributedError(f"--distributed_timeout {self.timeout_s} must be at least 1 second.")
        if not self.explicit:
            return
        given = {"--coordinator_address": self.coordinator_address, "--num_processes": self.num_processes,
                 "--process_id": self.process_id}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise DistributedError(
                f"{', '.join(missing)} missing: give --coordinator_address=HOST:PORT, --num_processes and"
                " --process_id together (or none of them, to let JAX detect a TPU pod, SLURM or MPI)."
            )
        match = _ADDRESS.match(self.coordinator_address)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise DistributedError(
                f"--coordinator_address {self.coordinator_address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)."
            )
        if self.num_processes < 1:
            raise DistributedError(f"--num_processes {self.num_processes} must be at least 1.")
        if not 0 <= self.process_id < self.num_processes:
            raise DistributedError(
                f"--process_id {self.process_id} is outside [0, {self.num_processes}): number the processes"
                f" 0..{self.num_processes - 1}, process 0 on the coordinator's host."
            )


def initialize(launch: Launch) -> None:
    """Joins the run ``launch`` describes; nothing happens when it requests no multi-process run.

    Call before anything else uses JAX. On CPU the cross-process collectives go
    through Gloo (TCP), so a run of several processes works on machines without
    accelerators, as the tests do.

    Raises:
      DistributedError: bad arguments, or the coordinator or a process did not
        answer within ``launch.timeout_s``.
    """
    global _joined
    launch.check()
    if not launch.requested:
        return
    deadline = time.monotonic() + launch.timeout_s
    if launch.explicit:
        _preflight(launch, deadline)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = (f"coordinator {launch.coordinator_address}, process {launch.process_id} of {launch.num_processes}"
             if launch.explicit else "auto-detected cluster")
    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator_address, num_processes=launch.num_processes,
            process_id=launch.process_id, initialization_timeout=max(1, int(deadline - time.monotonic())),
            heartbeat_timeout_seconds=launch.timeout_s,
        )
    except ValueError as e:  # auto-detection found no cluster
        raise DistributedError(f"cannot start a multi-process run ({' '.join(str(e).split())[:300]}); outside a"
                               " TPU pod, SLURM or MPI give --coordinator_address, --num_processes and"
                               " --process_id.") from None
    except Exception as e:  # the runtime's errors (deadline exceeded, unavailable, bind failures)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"the processes did not all connect within {launch.timeout_s} s ({where}: {first[:300]}). Start"
            " every process with the same --coordinator_address (process 0's host, a free port) and"
            " --num_processes, each with its own --process_id."
        ) from None
    _joined = True


_joined = False


def joined() -> bool:
    """Whether this process joined a run of several (:func:`initialize` succeeded)."""
    return _joined


def _preflight(launch: Launch, deadline: float) -> None:
    """Finds the common launch mistakes in Python, where they can be reported in one line.

    JAX's runtime ends the process with a fatal error (and a C++ stack trace) when
    its connection fails; a name that does not resolve, a port already taken on
    process 0 and an unreachable coordinator are checked here first.
    """
    host, port = launch.coordinator_address.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as e:
        raise DistributedError(f"--coordinator_address host {host!r} cannot be resolved ({e.strerror}); give"
                               " process 0's host name or IP address.") from None
    if launch.process_id == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # As gRPC does: a port whose last run's connections linger in TIME_WAIT is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError as e:
                raise DistributedError(f"process 0 cannot serve --coordinator_address {launch.coordinator_address}"
                                       f" (port {port}: {e.strerror}); choose a free port.") from None
        return
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5, launch.timeout_s)).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"process {launch.process_id} cannot reach the coordinator {launch.coordinator_address} within"
                    f" {launch.timeout_s} s ({e.strerror or e}); start process 0 on that host with the same"
                    " --coordinator_address, or check the address and firewall."
                ) from None
            time.sleep(0.2)


def is_primary() -> bool:
    """Whether this is process 0: the one that writes files and prints."""
    return jax.process_index() == 0


def broadcast_int(value: int | None) -> int | None:
    """Process 0's ``value`` on every process (a collective: every process must call it).

    For decisions read from a shared filesystem (the latest checkpoint step), which
    processes could otherwise see at different moments.
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    out = int(multihost_utils.broadcast_one_to_all(np.int32(-1 if value is None else value)))
    return None if out < 0 else out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, for a coordinator (tests and single-machine runs)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _gather(value: int) -> np.ndarray:
    from jax.experimental import multihost_utils  # needs an initialized backend; imported late

    return np.asarray(multihost_utils.process_allgather(np.int32(value)))


def all_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return ok
    return bool(_gather(int(ok)).all())


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on some process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(_gather(int(flag)).any())
