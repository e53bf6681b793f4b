"""GET /metrics: off without METRICS_TOKEN, only for its bearer, Prometheus text with the token requests and
refreshes counted and the connections by status read from the database; and no secret in it. Then a real
deployment: several gunicorn workers and a Celery worker, their counts summed in one scrape."""

import re
from datetime import timedelta

import pytest
import requests
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from connections.engine import refresh
from connections.models import Connection, OAuthToken
from tests.conftest import get_token, shared_token
from tests.support.waiting import wait_for

METRICS_TOKEN = "metrics-t0ken-for-tests"


def scrape(client: Client | None = None, token: str | None = METRICS_TOKEN):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return (client or Client()).get("/metrics", **headers)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.django_db
def test_metrics_are_off_without_a_token_and_need_its_bearer(settings):
    settings.METRICS_TOKEN = ""
    assert scrape().status_code == 404
    settings.METRICS_TOKEN = METRICS_TOKEN
    refused = scrape(token=None)
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert scrape(token="not-the-token").status_code == 401
    assert scrape().status_code == 200


@pytest.mark.django_db
def test_a_scrape_counts_token_requests_refreshes_and_connections_and_shows_no_secret(
    settings, bot_connection, bot, make_connection, authserver
):
    settings.METRICS_TOKEN = METRICS_TOKEN
    before = samples(scrape().content.decode())
    issued = ("controlroom_token_requests_total", (("from_memory", "false"), ("outcome", "issued")))
    refused = ("controlroom_token_requests_total", (("from_memory", "false"), ("outcome", "invalid_key")))
    refreshed = ("controlroom_token_refreshes_total", (("outcome", "success"), ("provider", "custom")))
    # when a bot gets a token, another presents a wrong key, and the token is refreshed
    answer = get_token(bot.raw_key, bot_connection.slug)
    assert answer.status_code == 200
    assert get_token("crk_000000000000_wrong", bot_connection.slug).status_code == 401
    refresh.token_refresh(token=shared_token(bot_connection), actor_label="test")
    # and the connections are in each status
    make_connection(is_enabled=False)
    make_connection()  # never connected
    failing = make_connection()
    OAuthToken.objects.create(connection=failing, access_token="a", state="refresh_failing")
    response = scrape()
    text = response.content.decode()
    assert response["Content-Type"].startswith("text/plain")
    after = samples(text)
    assert after[issued] == before.get(issued, 0) + 1
    assert after[refused] == before.get(refused, 0) + 1
    assert after[refreshed] == before.get(refreshed, 0) + 1
    assert after[("controlroom_token_refresh_seconds_count", (("provider", "custom"),))] >= 1
    statuses = {labels[0][1]: value for (name, labels), value in after.items() if name == "controlroom_connections"}
    assert statuses == {
        "connected": 1, "refresh_failing": 1, "reauthorization_required": 0, "not_connected": 1, "disabled": 1
    }  # fmt: skip
    assert 3000 < after[("controlroom_earliest_expiry_seconds", ())] <= 3600
    assert ("controlroom_refresh_backlog_tokens", ()) in after
    # and nothing secret: no token, key, secret or address
    token = shared_token(bot_connection)
    for secret in (token.access_token, token.refresh_token, bot.raw_key, bot_connection.client_secret, METRICS_TOKEN):
        assert secret not in text
    assert not re.search(r"127\.0\.0\.1|loopback-\d", text)  # no URL or connection name in a label


@pytest.mark.django_db(transaction=True)
def test_one_scrape_sums_the_counts_of_every_web_and_worker_process(make_stack, bot_connection, bot, tmp_path):
    # given two gunicorn web processes with two workers each and a Celery worker, counting into one directory
    stack = make_stack(METRICS_TOKEN=METRICS_TOKEN, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    ports = stack.webs(["web-1", "web-2"], workers=2, threads=2)
    stack.worker()
    token_url = "http://127.0.0.1:{port}/api/v1/connections/" + bot_connection.slug + "/token"
    # when bots ask each process for the token (some answered from memory), and the worker refreshes it
    answers = [
        requests.get(token_url.format(port=port), headers={"Authorization": f"Bearer {bot.raw_key}"}, timeout=30)
        for port in ports.values()
        for _ in range(10)
    ]
    assert {answer.status_code for answer in answers} == {200}, stack.logs()
    token = shared_token(bot_connection)
    OAuthToken.objects.filter(pk=token.pk).update(next_refresh_at=timezone.now() - timedelta(seconds=1))
    stack.send_task("connections.tasks.refresh_token", token.pk, token.generation)
    wait_for(lambda: shared_token(bot_connection).generation > token.generation, 30, "the worker's refresh")

    # then a scrape of either web process sums every process's counts
    def counted() -> dict:
        scraped = requests.get(
            f"http://127.0.0.1:{ports['web-1']}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=30,
        )
        assert scraped.status_code == 200, scraped.text
        return samples(scraped.text)

    found = counted()
    issued = sum(
        value for (name, labels), value in found.items()
        if name == "controlroom_token_requests_total" and ("outcome", "issued") in labels
    )  # fmt: skip
    assert issued == len(answers), found
    from_memory = ("controlroom_token_requests_total", (("from_memory", "true"), ("outcome", "issued")))
    assert found.get(from_memory, 0) >= 1  # the same request again, answered from memory by a web process
    assert found[("controlroom_token_refreshes_total", (("outcome", "success"), ("provider", "custom")))] == 1
    assert found[("controlroom_connections", (("status", "connected"),))] == Connection.objects.count()
    no_token = requests.get(f"http://127.0.0.1:{ports['web-2']}/metrics", timeout=30)
    assert no_token.status_code == 401


@pytest.mark.django_db
def test_the_grafana_dashboard_asks_only_for_metrics_control_room_exposes(settings, bot_connection):
    import json
    from pathlib import Path

    settings.METRICS_TOKEN = METRICS_TOKEN
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exposed = {
        family.name + suffix
        for family in text_string_to_metric_families(scrape().content.decode())
        for suffix in suffixes.get(family.type, ("",))
    }
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(controlroom_[a-z_]+)", target["expr"])
    }
    assert asked and asked <= exposed, asked - exposed


def _counter_file(directory, identifier: str, value: float) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    counts = MmapedDict(str(directory / f"counter_{identifier}.db"))
    key = mmap_key("controlroom_token_requests_total", "controlroom_token_requests_total", ["outcome", "from_memory"],
                   ["issued", "true"], "Answers")  # fmt: skip
    counts.write_value(key, value, 0.0)
    counts.close()


def _summed(directory) -> float:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return (
        registry.get_sample_value("controlroom_token_requests_total", {"outcome": "issued", "from_memory": "true"})
        or 0.0
    )


def test_an_exited_web_process_files_are_folded_into_one_and_nothing_is_lost(tmp_path):
    from connections.ops import metrics

    # given the files of two web processes that ran on this host, and a live gauge of one
    for pid, value in ((101, 5), (102, 7)):
        _counter_file(tmp_path, metrics.process_identifier(pid), value)
    (tmp_path / f"gauge_livesum_{metrics.process_identifier(101)}.db").write_bytes(b"")
    # when both exit (gunicorn's child_exit)
    metrics.process_exited(101, str(tmp_path))
    metrics.process_exited(102, str(tmp_path))
    # then one file holds their counts, the scrape sums the same, and the live gauge is gone
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"counter_{metrics._host}-retired.db"]
    assert _summed(tmp_path) == 12


def test_at_start_the_files_of_dead_processes_of_this_host_go(tmp_path):
    import os

    from connections.ops import metrics

    mine_alive = metrics.process_identifier(os.getpid())
    dead = metrics.process_identifier(2**22 + 12345)  # no such process
    other_host = "another-host-101"
    for identifier in (mine_alive, dead, other_host):
        _counter_file(tmp_path, identifier, 1)
    metrics.directory_tidied(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{mine_alive}.db", f"counter_{other_host}.db"]
    )
