"""Paging the admin's big lists without counting them: a list of millions of rows costs a full COUNT(*) on every
load with Django's own paginator (and another with show_full_result_count). Here a count stops at EXACT_UP_TO
rows; past that, PostgreSQL's planner estimates it (EXPLAIN: no row is read), and the pages go up to MAX_PAGES
(further back, the filters and the date drill-down narrow the list)."""

import json
from functools import cached_property
from typing import ClassVar

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

EXACT_UP_TO = 10_000  # rows counted exactly; more is "about N"
MAX_PAGES = 1_000  # an offset beyond this many pages reads that many rows first


def estimated_count(queryset: QuerySet) -> int | None:
    """The planner's estimate of the rows the query returns (PostgreSQL), or None where there is none."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """Counts up to EXACT_UP_TO rows (a bounded count: SELECT COUNT(*) FROM (... LIMIT n)), estimates beyond."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        counted = queryset.order_by()[: EXACT_UP_TO + 1].count()
        if counted <= EXACT_UP_TO:
            return counted
        estimate = estimated_count(queryset)
        return max(estimate, counted) if estimate is not None else super().count

    @cached_property
    def num_pages(self) -> int:
        return min(super().num_pages, MAX_PAGES)


class BigListMixin:
    """A ModelAdmin whose list may hold millions of rows: no full count on a page load."""

    paginator: ClassVar[type] = EstimatedCountPaginator
    show_full_result_count = False
