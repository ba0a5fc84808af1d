"""A Redis master, one replica and three sentinels on this machine, for failover tests.

Real ``redis-server`` processes, the sentinels being ``redis-server --sentinel``: quorum 2, a
master counted down after ``DOWN_AFTER_MS`` without answers, so a failover takes a few seconds
instead of the default half minute. Nothing persists: a killed server comes back empty, as a
pod without a volume would, and the sentinels turn it into a replica of the new master.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis

from imgq.local.supervisor import Service, free_port, wait_until

MASTER_NAME = "imgq"
"""The name the sentinels monitor the group under (``master_name`` in the URL)."""
DOWN_AFTER_MS = 1000
"""Sentinel's ``down-after-milliseconds``: silence before a master counts as down."""
FAILOVER_TIMEOUT_MS = 5000
"""Sentinel's ``failover-timeout``: how long one failover attempt may take."""


class SentinelGroup:
    """Two data servers and three sentinels, each a process of its own in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: dict[int, Service] = {}
        master, replica = free_port(), free_port()
        self.servers[master] = self._start_server(master, None)
        self.servers[replica] = self._start_server(replica, master)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [self._start_sentinel(port, master) for port in self.sentinel_ports]
        wait_until(self._converged, 30, "sentinels that see the replica and each other")

    @property
    def url(self) -> str:
        """The group in imgq's Sentinel URL form."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"sentinel://{hosts}/0?master_name={MASTER_NAME}"

    def _start_server(self, port: int, master: int | None) -> Service:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.directory)]
        if master is not None:
            argv += ["--replicaof", "127.0.0.1", str(master)]
        service = Service(f"redis-{port}", argv, dict(os.environ), self.directory)
        wait_until(lambda: redis.Redis(port=port).ping(), 20, f"redis-server on {port}")
        return service

    def _start_sentinel(self, port: int, master: int) -> Service:
        config = self.directory / f"sentinel-{port}.conf"  # sentinels rewrite their config
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
        )
        argv = ["redis-server", str(config), "--sentinel"]
        return Service(f"sentinel-{port}", argv, dict(os.environ), self.directory)

    def _converged(self) -> bool:
        for port in self.sentinel_ports:
            state = redis.Redis(port=port, decode_responses=True).sentinel_master(MASTER_NAME)
            assert isinstance(state, dict), state  # redis-py types it as dict or bool
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int:
        """The port the sentinels currently name as the master's."""
        client = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        assert isinstance(address, tuple), address  # redis-py types it loosely
        return int(address[1])

    def kill_master(self) -> int:
        """SIGKILL the current master (no chance to flush its replication stream); its port."""
        port = self.master_port()
        service = self.servers[port]
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait()
        service.close_log()
        return port

    def restart(self, port: int) -> None:
        """Start the killed server again, empty, as the sentinels' next replica."""
        self.servers[port] = self._start_server(port, None)

    def replicas_of_master(self) -> int:
        """Replicas connected to the current master."""
        info = redis.Redis(port=self.master_port()).info("replication")
        return int(info["connected_slaves"])

    def close(self) -> None:
        """Stop every process: sentinels first, so none starts a failover on the way out."""
        for service in [*self.sentinels, *self.servers.values()]:
            service.stop()
