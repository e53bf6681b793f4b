"""The reads (connections.selectors): who may do what with which connection, and statuses in words."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.utils import timezone

from connections import selectors
from connections.models import Connection, ConnectionStatus, OAuthToken, TokenState

pytestmark = pytest.mark.django_db

# kind of user -> (may manage, may view, is invited, may authorize a shared token, may authorize their own
# user-specific token), for connections whose invited role is "Bots"
WHO_MAY = {
    "manager": (True, True, False, True, True),
    "manager by role": (True, True, False, True, True),
    "superuser": (True, True, False, True, True),
    "viewer": (False, True, False, False, False),
    "invited": (False, False, True, False, True),
    "invited, inactive": (False, False, False, False, False),
    "manager, inactive": (False, False, False, False, False),
    "in another role": (False, False, False, False, False),
    "anonymous": (False, False, False, False, False),
}


def _user(kind: str, make_user, invited_role: Group):
    if kind == "anonymous":
        return AnonymousUser()
    user = {
        "manager": lambda: make_user(perms=("manage_connections",)),
        "manager by role": lambda: make_user(roles=(_role_with("manage_connections"),)),
        "superuser": lambda: make_user(),
        "viewer": lambda: make_user(perms=("view_connections",)),
        "invited": lambda: make_user(roles=(invited_role,)),
        "invited, inactive": lambda: make_user(roles=(invited_role,)),
        "manager, inactive": lambda: make_user(perms=("manage_connections",)),
        "in another role": lambda: make_user(roles=(Group.objects.create(name="Others"),)),
    }[kind]()
    user.is_superuser = kind == "superuser"
    user.is_active = "inactive" not in kind
    user.save()
    return user


def _role_with(codename: str) -> Group:
    role = Group.objects.create(name=f"Role with {codename}")
    role.permissions.add(Permission.objects.get(codename=codename))
    return role


@pytest.mark.parametrize("kind", WHO_MAY)
def test_who_may_manage_view_use_and_authorize(kind, make_user, make_connection):
    # given a shared and a user-specific connection, both inviting the role "Bots"
    bots = Group.objects.create(name="Bots")
    shared = make_connection(register=False)
    own = make_connection(register=False, token_type="user_specific")
    for connection in (shared, own):
        connection.roles.add(bots)
    user = _user(kind, make_user, bots)

    # when / then: managing and viewing are feature permissions; using is an invitation; a shared token is
    # authorized by a manager, a user-specific one by each invited user (or a manager)
    assert (
        selectors.user_can_manage_connections(user),
        selectors.user_can_view_connections(user),
        selectors.user_is_invited(user, own),
        selectors.user_may_authorize(user, shared),
        selectors.user_may_authorize(user, own),
    ) == WHO_MAY[kind]


def test_my_connections_lists_the_user_specific_connections_a_user_may_authorize(make_user, make_connection):
    # given user-specific connections invited to two roles of one user, to another role, and a shared one
    first, second = Group.objects.create(name="First"), Group.objects.create(name="Second")
    zulu = make_connection(register=False, token_type="user_specific", name="Zulu")
    alpha = make_connection(register=False, token_type="user_specific", name="Alpha")
    other = make_connection(register=False, token_type="user_specific", name="Mike")
    shared = make_connection(register=False, name="Shared")
    zulu.roles.add(first, second)
    alpha.roles.add(second)
    other.roles.add(Group.objects.create(name="Third"))
    shared.roles.add(first)
    user = make_user(roles=(first, second))
    manager = make_user(perms=("manage_connections",))

    # when / then: the user's, each once and by name; a manager may authorize a token for any of them
    assert list(selectors.user_specific_connections_for(user)) == [alpha, zulu]
    assert list(selectors.user_specific_connections_for(manager)) == [alpha, other, zulu]


def _token(connection: Connection, **fields: object) -> OAuthToken:
    return OAuthToken.objects.create(connection=connection, access_token="a", **fields)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, ("not_connected", "Not connected")),
        ({"state": TokenState.ACTIVE, "expires_in": 7200}, ("connected", "Connected, expires in 2 h")),
        (
            {"state": TokenState.REFRESH_FAILING, "expires_in": 600},
            ("refresh_failing", "Refresh failing, expires in 10 min"),
        ),
        (
            {"state": TokenState.REAUTHORIZATION_REQUIRED, "expires_in": -300},
            ("reauthorization_required", "Reauthorization required, expired 5 min ago"),
        ),
        ({"state": TokenState.ACTIVE, "expires_in": None}, ("connected", "Connected, no expiry")),
        ({"state": TokenState.ACTIVE, "expires_in": 7200, "disabled": True}, ("disabled", "Disabled")),
    ],
)
def test_the_status_of_a_shared_connection_in_words(stored, expected, make_connection):
    # given a shared connection with no token, or one in this state, expiring then (seconds from now)
    connection = make_connection(register=False)
    if stored is not None:
        expires_in = stored["expires_in"]
        # a few seconds on top, so that the words do not depend on how long the test takes
        expires_at = None if expires_in is None else timezone.now() + timedelta(seconds=expires_in + 10)
        _token(connection, state=stored["state"], expires_at=expires_at)
        if stored.get("disabled"):
            connection.is_enabled = False
            connection.save()

    # when
    status = selectors.connection_status(connection)

    # then the code (for machines) and the sentence the admin shows
    assert (status.code, str(status)) == expected


def test_a_user_specific_connection_counts_its_users(make_user, make_connection):
    connection = make_connection(register=False, token_type="user_specific")
    assert str(selectors.connection_status(connection)) == "Not connected (no user has authorized yet)"
    _token(connection, user=make_user())
    assert str(selectors.connection_status(connection)) == "1 user connected"
    _token(connection, user=make_user())
    assert str(selectors.connection_status(connection)) == "2 users connected"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 s"),
        (89, "89 s"),
        (90, "2 min"),
        (-600, "10 min"),
        (90 * 60 - 1, "90 min"),
        (90 * 60, "2 h"),
        (48 * 3600 - 1, "48 h"),
        (48 * 3600, "2 days"),
        (30 * 86400, "30 days"),
    ],
)
def test_durations_are_said_in_the_unit_a_person_reads_best(seconds, words):
    assert selectors.format_duration(seconds) == words


def test_the_list_columns_summarize_all_tokens_from_prefetched_rows(
    make_user, make_connection, django_assert_num_queries
):
    # given a user-specific connection with three users' tokens: refreshed at different times, two failing
    now = timezone.now()
    connection = make_connection(register=False, token_type="user_specific")
    _token(
        connection,
        user=make_user(),
        refreshed_at=now - timedelta(hours=3),
        next_refresh_at=now + timedelta(hours=2),
        consecutive_failures=4,
        last_error="An older failure.",
        last_error_at=now - timedelta(hours=2),
    )
    failing = _token(
        connection,
        user=make_user(),
        refreshed_at=now - timedelta(hours=5),
        next_refresh_at=now + timedelta(minutes=10, seconds=10),
        consecutive_failures=2,
        last_error="The provider's token URL answered HTTP 503; it will be retried.",
        last_error_at=now - timedelta(minutes=1),
    )
    latest = _token(connection, user=make_user(), authorized_at=now - timedelta(minutes=20))  # never refreshed
    listed = Connection.objects.prefetch_related("tokens").get(pk=connection.pk)

    # when the admin list asks for its columns
    with django_assert_num_queries(0):
        summary = selectors.token_summary(listed)

    # then: the last write of any token, the earliest next refresh, the most failures of any, the latest error
    assert summary.last_refresh_at == latest.authorized_at  # written last; authorized, not refreshed
    assert summary.next_refresh_at == failing.next_refresh_at
    assert summary.consecutive_failures == 4
    assert summary.last_failure == failing
    assert summary.last_refresh_text.endswith("(20 min ago)")
    assert summary.next_refresh_text == "in 10 min"
    assert summary.last_error_text.startswith("The provider's token URL answered HTTP 503; it will be retried. (")
    assert summary.last_error_text.endswith("; 2 failures in a row)")


def test_the_list_columns_of_a_connection_without_tokens_are_dashes(make_connection):
    summary = selectors.token_summary(make_connection(register=False))
    assert (summary.last_refresh_text, summary.next_refresh_text, summary.last_error_text) == ("—", "—", "—")
    assert summary.consecutive_failures == 0


def test_a_refresh_already_due_says_so(make_connection):
    connection = make_connection(register=False)
    _token(connection, next_refresh_at=timezone.now() - timedelta(seconds=5))
    assert selectors.token_summary(connection).next_refresh_text == "due now"


def test_the_sql_and_the_python_judge_every_state_alike(every_kind_of_connection):
    # given connections of both token types in every status, and the odd ones (connections/conftest.py)
    made = every_kind_of_connection
    # when each is judged in Python (a row of the list) and in SQL (the filter, the counts)
    in_python = {connection.pk: selectors.connection_status(connection).code for connection in made.values()}
    in_sql = dict(
        Connection.objects.filter(pk__in=in_python)
        .annotate(status=selectors.connection_status_expression())
        .values_list("pk", "status")
    )
    # then they agree on every one, and every status is among them
    assert in_sql == in_python
    assert set(in_python.values()) == set(ConnectionStatus)
