"""Probes leave from `dashboard.probe_source_address`, and the simulated fleet can partition one
vantage point (one source address) from a region while every other vantage still reaches it."""
from __future__ import annotations

import httpx
import pytest

from dashboard.demo.simulator import SimulatedFleet


def test_a_region_partitioned_from_one_source_address_fails_only_the_probes_from_there(fleet: SimulatedFleet,
                                                                                     poller_for) -> None:
    fleet.set("eu-west-1", partitioned_from=["127.0.0.2"])
    # A generous timeout: only the partition may fail a probe here, never a loaded machine.
    relaxed = {"timeout_seconds": 5, "poll_interval_seconds": 10}
    cut_off = poller_for(fleet, probe_source_address="127.0.0.2", **relaxed)
    assert cut_off.prober.local_address == "127.0.0.2"
    targets = [(region, fleet.base_urls[region]) for region in fleet.regions]
    seen = {(r.region, r.endpoint): r for r in cut_off.prober.probe_all(targets)}
    assert not seen[("eu-west-1", "health")].ok
    assert "connection" in seen[("eu-west-1", "health")].reason.lower()
    assert seen[("us-east-1", "health")].ok
    elsewhere = poller_for(fleet, **relaxed)  # from 127.0.0.1: another vantage point
    assert all(r.ok for r in elsewhere.prober.probe_all(targets))


def test_the_partition_is_steerable_over_the_control_api_and_checked(fleet: SimulatedFleet) -> None:
    url = f"{fleet.control_url}/eu-west-1"
    answer = httpx.post(url, json={"partitioned_from": ["127.0.0.3"]})
    assert answer.status_code == 200 and answer.json()["partitioned_from"] == ["127.0.0.3"]
    refused = httpx.post(url, json={"partitioned_from": ["eu-west-1"]})
    assert refused.status_code == 400 and "partitioned_from" in refused.json()["message"]


@pytest.mark.parametrize("value", ["127.0.0.2", 3])
def test_partitioned_from_must_be_a_list(fleet: SimulatedFleet, value) -> None:
    with pytest.raises(ValueError, match="partitioned_from"):
        fleet.set("eu-west-1", partitioned_from=value)


def test_standalone_is_one_vantage_point_never_disputed_and_says_so_in_the_cluster_api(dash) -> None:
    dash.cycle()
    status = dash.client.get("/api/v1/status").get_json()
    for region in status["regions"]:
        assert region["disputed"] is False
        assert list(region["vantage"]) == [dash.settings.deployment.region]
        assert region["vantage"][dash.settings.deployment.region]["state"] == region["state"]
    cluster = dash.client.get("/api/v1/cluster").get_json()
    assert cluster == {"mode": "standalone", "instance": dash.settings.deployment.region, "leader": None,
                       "members": [], "etcd": None}
    assert "cluster" not in dash.client.get("/healthz").get_json()
