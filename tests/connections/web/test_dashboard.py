"""The dashboard's figures over every connection (connections.web.dashboard): summarized by a scheduled task into
the cache, read by each page load; made by the page itself only when there is no summary."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connections import tasks
from connections.models import OAuthToken, TokenState
from connections.web import dashboard

pytestmark = pytest.mark.django_db

PAGE = "/admin/connections/connection/dashboard/"


def test_a_page_load_reads_the_summary_the_task_made(admin_client, make_connection):
    # given a summary made by the scheduled task, and a connection failing since
    tasks.dashboard_summarize()
    failing = make_connection(register=False, name="Failing CRM")
    OAuthToken.objects.create(connection=failing, access_token="a", state=TokenState.REFRESH_FAILING)
    # when the dashboard is opened, it counts no connection's status itself
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(PAGE)
    assert response.status_code == 200
    assert not [query["sql"] for query in queries if "GROUP BY" in query["sql"]]
    assert response.context["statuses"]["refresh_failing"] == 0  # as of the summary, which the page says
    assert 'id="summarized-at"' in response.content.decode()
    # but the attention list is read at once
    assert [item.connection for item in response.context["attention"]] == [failing]
    # and the next summary has it
    dashboard.dashboard_summarize()  # the task once a period: its next period's copy
    assert admin_client.get(PAGE).context["statuses"]["refresh_failing"] == 1


def test_without_a_summary_the_page_makes_one(admin_client, make_connection):
    make_connection(register=False, name="Switched off", is_enabled=False)
    cache.delete(dashboard.SUMMARY_KEY)
    assert admin_client.get(PAGE).context["statuses"]["disabled"] == 1
    assert cache.get(dashboard.SUMMARY_KEY)["statuses"]["disabled"] == 1
