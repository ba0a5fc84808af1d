"""Podman set up to build and run imgq's images on a machine with no Docker engine or registry.

What works on this machine kind is recorded in ``shared/containers.md``; this module does it:

* a ``containers.conf`` (runtime ``runc``: crun fails on hybrid cgroups; ulimits podman may set
  without ``CAP_SYS_RESOURCE``; ``cgroupfs`` and file events, since there is no systemd) and a
  ``storage.conf`` in a scratch directory outside the repository (``IMGQ_PODMAN_DIR``, default
  ``/var/tmp/imgq-podman``) that outlives a run, so the layer cache makes the next build fast;
* base images that no registry can give us, each built only when missing: ``bookworm-min``
  (``debootstrap`` from the machine's own Debian mirror, read at run time), a Python 3.11
  stand-in for ``python:3.11-slim`` (Debian's python3 with a venv first on ``PATH``, and the
  machine's CA bundle, since outbound HTTPS goes through an intercepting CA here) and a Redis
  stand-in for ``redis:7-alpine`` (Debian's redis-server);
* the project image from ``docker/Dockerfile`` as it is, only its ``PYTHON_IMAGE`` build
  argument pointing at the stand-in, in Docker format (OCI images drop ``HEALTHCHECK``).

``python -m tests.containers.podman`` builds everything and prints the timings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.containers.standins import (
    BASE_IMAGE,
    PYTHON_CONTAINERFILE,
    REDIS_CONTAINERFILE,
    REDIS_ENTRYPOINT,
)

REPO = Path(__file__).resolve().parents[2]
SCRATCH = Path(os.environ.get("IMGQ_PODMAN_DIR", "/var/tmp/imgq-podman"))
"""Podman's configuration and image storage; kept between runs for the layer cache."""

PYTHON_IMAGE = "localhost/imgq-python-standin:3.11"
"""Stands in for ``python:3.11.14-slim-bookworm``, the Dockerfile's ``PYTHON_IMAGE``."""
REDIS_IMAGE = "localhost/imgq-redis-standin:7"
"""Stands in for compose's ``redis:7.4.2-alpine`` (Debian's 7.0: same commands and flags)."""
PROJECT_IMAGE = "localhost/imgq:0.1.0"
"""The tag ``docker/compose.yaml`` and the ``cpu`` overlay run (``imgq:0.1.0``)."""
LABEL = "imgq.test=containers"
"""Label on every image this module builds, so a reader of ``podman images`` knows whose."""
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
REQUIRED = ["podman", "runc", "debootstrap", "iptables"]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PodmanError(RuntimeError):
    """A podman command failed; the message has its output."""


def unavailable_reason() -> str | None:
    """Why podman cannot run imgq's containers here, or ``None`` when it can."""
    missing = [name for name in REQUIRED if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
    if os.geteuid() != 0:
        return "podman runs rootful here (netavark bridge, cgroupfs): run as root"
    if shutil.which("podman-compose", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}"):
        return None
    return "podman-compose not installed (pip install -e '.[dev]')"


def debian_mirror() -> str:
    """The machine's Debian mirror (the first ``URIs:`` of ``/etc/apt/sources.list.d``)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        match = re.search(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE)
        if match and "security" not in match.group(1):
            return match.group(1)
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["deb"]:
            return next(part for part in parts[1:] if part.startswith("http"))
    raise PodmanError("no Debian mirror in /etc/apt/sources.list.d/*.sources or sources.list")


@dataclass
class Podman:
    """Runs podman with this module's configuration; ``timings`` records what each build took."""

    scratch: Path = SCRATCH
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        (self.scratch / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        (self.scratch / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.scratch / "storage"}"\n'
            f'runroot = "{self.scratch / "run"}"\n'
        )

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with podman pointed at the scratch configuration."""
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.scratch / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.scratch / "storage.conf"),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``; raises ``PodmanError`` with its output when ``check`` and it fails."""
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=stdin is None,
            input=stdin,
            timeout=timeout,
            check=False,
        )
        if isinstance(result.stdout, bytes):
            result = subprocess.CompletedProcess(
                result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
            )
        if check and result.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)}: {result.stderr[-4000:]}")
        return result

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        """``podman KIND inspect NAME``'s first object (``pod inspect`` in 4.3 gives one)."""
        found: list[dict[str, Any]] | dict[str, Any] = json.loads(
            self.run(kind, "inspect", name).stdout
        )
        return found if isinstance(found, dict) else found[0]

    def has_image(self, name: str) -> bool:
        """Whether the image ``name`` is in storage."""
        return self.run("image", "exists", name, check=False).returncode == 0

    def image_id(self, name: str) -> str | None:
        """The image's ID, or ``None`` when there is no such image."""
        if not self.has_image(name):
            return None
        return self.run("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()

    def image_size(self, name: str) -> int:
        """The image's size in bytes, as ``podman images`` counts it."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", name).stdout)

    def _timed_build(self, name: str, argv: Sequence[str], timeout: float) -> None:
        started = time.monotonic()
        self.run("build", "--pull=never", "--format", "docker", "--label", LABEL, *argv,
                 timeout=timeout)  # fmt: skip
        self.timings[name] = time.monotonic() - started

    def ensure_base(self) -> None:
        """``bookworm-min``: debootstrap's minbase from the machine's mirror, imported."""
        if self.has_image(BASE_IMAGE):
            return
        started = time.monotonic()
        rootfs = self.scratch / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        archive = self.scratch / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(rootfs.iterdir()):
                tar.add(entry, arcname=entry.name)
        self.run("import", str(archive), BASE_IMAGE, timeout=300)
        archive.unlink()
        shutil.rmtree(rootfs)
        self.timings["bookworm-min"] = time.monotonic() - started

    def _current(self, image: str, recipe: str) -> bool:
        """Whether ``image`` exists and was built from this ``recipe`` (its files' text)."""
        if not self.has_image(image):
            return False
        label = self.run(
            "image", "inspect", "--format", '{{index .Labels "imgq.recipe"}}', image
        ).stdout.strip()
        return label == _digest(recipe)

    def _build_standin(self, name: str, image: str, files: dict[str, str], context: Path) -> None:
        """Build ``image`` from ``files`` (``Containerfile`` among them) in ``context``."""
        for file_name, text in files.items():
            (context / file_name).write_text(text)
        recipe = "".join(files.values())
        argv = ["--label", f"imgq.recipe={_digest(recipe)}", "-t", image, str(context)]
        self._timed_build(name, argv, 900)

    def ensure_standins(self) -> None:
        """The Python and Redis stand-ins, built on ``bookworm-min`` when missing or changed."""
        self.ensure_base()
        if not self._current(PYTHON_IMAGE, PYTHON_CONTAINERFILE):
            context = self.scratch / "python-context"
            shutil.rmtree(context, ignore_errors=True)
            (context / "host-ca").mkdir(parents=True)
            for index, path in enumerate(sorted(HOST_CA_DIR.glob("*.crt"))):
                shutil.copy(path, context / "host-ca" / f"host-{index}.crt")
            files = {"Containerfile": PYTHON_CONTAINERFILE}
            self._build_standin("python-standin", PYTHON_IMAGE, files, context)
        redis_files = {
            "Containerfile": REDIS_CONTAINERFILE,
            "docker-entrypoint.sh": REDIS_ENTRYPOINT,
        }
        if not self._current(REDIS_IMAGE, "".join(redis_files.values())):
            context = self.scratch / "redis-context"
            context.mkdir(exist_ok=True)
            self._build_standin("redis-standin", REDIS_IMAGE, redis_files, context)

    def build_project(self) -> None:
        """``docker/Dockerfile`` as a user builds it, on the Python stand-in (cached layers)."""
        self.ensure_standins()
        previous = self.image_id(PROJECT_IMAGE)
        self._timed_build(
            "imgq",
            [
                "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}",
                "-f", str(REPO / "docker" / "Dockerfile"),
                "-t", PROJECT_IMAGE,
                str(REPO),
            ],
            1500,
        )  # fmt: skip
        # A code change leaves the previous image behind, untagged, with its own copy of the
        # virtualenv (2 GB): remove it. Not `image prune`: that drops the layer cache too.
        replaced = self.image_id(PROJECT_IMAGE)
        if previous and replaced != previous:
            self.run("rmi", previous, check=False, timeout=300)

    def remove_leftovers(self, label: str) -> None:
        """Remove what carries ``label`` (containers, pods, volumes, networks), then podman's
        host leftovers once no container of this storage remains."""
        for kind, listing in (
            ("container", ["ps", "-a", "-q"]),
            ("pod", ["pod", "ps", "-q"]),
            ("volume", ["volume", "ls", "-q"]),
            ("network", ["network", "ls", "-q"]),
        ):
            names = self.run(*listing, "--filter", f"label={label}").stdout.split()
            if names:
                self.run(kind, "rm", "-f", *names, check=False, timeout=120)
        if not self.run("ps", "-a", "-q").stdout.split():
            remove_host_leftovers()


def remove_host_leftovers() -> None:
    """Empty ``libpod_parent`` cgroups and the ``NETAVARK`` iptables chains that podman keeps
    after its last container (rmdir removes only cgroups no process is in)."""
    for directory in sorted(Path("/sys/fs/cgroup").glob("*/libpod_parent/**/"), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    for table in ("nat", "filter"):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        for rule in rules:
            words = shlex.split(rule)
            if (
                words[:1] == ["-A"]
                and "-j" in words
                and words[words.index("-j") + 1].startswith("NETAVARK")
                and not words[1].startswith("NETAVARK")
            ):
                subprocess.run(["iptables", "-t", table, "-D", *words[1:]], check=False)
        chains = [rule.split()[1] for rule in rules if rule.startswith("-N NETAVARK")]
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], check=False)


def main() -> None:
    """Build the base images and the project image; print what each took and the sizes."""
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"podman cannot run here: {reason}")
    podman = Podman()
    podman.build_project()
    for name, seconds in podman.timings.items():
        print(f"built {name} in {seconds:.0f} s")
    for image in (BASE_IMAGE, PYTHON_IMAGE, REDIS_IMAGE, PROJECT_IMAGE):
        print(f"{image}: {podman.image_size(image) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
