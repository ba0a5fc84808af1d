"""imgq's images built and run with podman: the compose stack and ``podman kube play``."""
