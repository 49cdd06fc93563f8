"""A real multi-node Ray cluster on this machine, for the executor tests: `ray start --head`
plus worker nodes, each node started in its own process group with its own temp dir, so a
test can kill exactly one node (every process of it) and teardown stops exactly what it
started (never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.serving import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# small footprint on a 2-core CI machine; no auth token files written under ~/.ray
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # a killed node is declared dead in about a second, not after Ray's default ~30 s
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "2",
    # a loaded 2-core box can take longer than Ray's default to register a new node
    "RAY_raylet_start_wait_time_s": "120",
}
OBJECT_STORE = str(80 << 20)


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: dict[str, int] = {}  # node name -> process group id of its daemons
        self.raylets: dict[str, int] = {}  # node name -> raylet pid (the parent of its workers)

    def start_node(self, name: str, head: bool = False, cpus: int = 1) -> None:
        temp = self.root / name
        temp.mkdir(parents=True)
        where = ["--head", "--port", str(self.port), "--include-dashboard=false"] if head else [
            "--address", self.address]  # fmt: skip
        proc = subprocess.run(
            [RAY, "start", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
             "--object-store-memory", OBJECT_STORE, "--temp-dir", str(temp), "--disable-usage-stats"],
            env=ENV, capture_output=True, text=True, timeout=120, start_new_session=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed: {proc.stderr[-2000:]}")
        # `ray start` exits after spawning its daemons; they keep its process group, but the
        # workers the raylet forks later move to process groups of their own
        self.raylets[name] = raylet_of(str(temp))
        self.groups[name] = os.getpgid(self.raylets[name])

    def on_node(self, name: str, pid: int) -> bool:
        try:
            return parent_of(pid) == self.raylets[name] or os.getpgid(pid) == self.groups[name]
        except (OSError, KeyError):
            return False

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of the node: its daemons and the raylet's workers."""
        workers = [pid for pid in pids() if parent_of(pid) == self.raylets[name]]
        kill_group(self.groups.pop(name))
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        del self.raylets[name]

    def stop(self) -> None:
        for name in list(self.groups):
            self.kill_node(name)


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rpartition(")")[2].split()[1])


def raylet_of(marker: str) -> int:
    """The pid of the raylet whose command line names `marker` (its node's temp dir)."""
    for _ in range(100):
        for pid in pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "raylet/raylet" in cmd and marker in cmd:
                return pid
        time.sleep(0.1)
    raise RuntimeError(f"no raylet found for {marker}")


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
