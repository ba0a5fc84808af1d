"""Reading what a service reports on its Prometheus endpoint."""

from __future__ import annotations

import requests


def scrape(port: int) -> dict[str, float]:
    """Every sample of a worker's Prometheus endpoint on this machine (see ``scrape_url``)."""
    return scrape_url(f"http://127.0.0.1:{port}/metrics")


def scrape_url(url: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint.

    Args:
        url: the endpoint, ``/metrics`` included.

    Returns:
        Sample values keyed ``name{label="value",...}``, labels sorted (``name{}`` for none).
    """
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
