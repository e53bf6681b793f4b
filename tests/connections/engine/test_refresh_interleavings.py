"""A property of the refresh engine (connections.engine.refresh): whatever order refreshes start and finish in, between
failures, disconnects and re-authorizations, one token stays consistent. Hypothesis drives the steps in random
orders against the real loopback provider (which rotates refresh tokens and revokes a reused one's family):

- at most one token row per owner, and none once disconnected;
- the stored refresh token is the newest the provider issued for the current grant, and still live there;
- the provider is never shown a refresh token it has already accepted (rotated away from);
- once disconnected, nothing is left live at the provider;
- a late failure of a replaced grant never marks the current one for re-authorization.

A refresh is taken apart the way it runs: the lease, the provider's answer, the fenced write of the outcome.
"""

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from connections import services
from connections.engine import lease, outcomes
from connections.engine import store as tokens
from connections.errors import ProviderError
from connections.models import OAuthToken, TokenState
from connections.oauth import client as oauth_client
from connections.oauth.client import TokenResponse
from providers.models import Provider
from tests.conftest import authorize_and_store_token, shared_token

pytestmark = pytest.mark.django_db


@dataclass
class Flight:
    """One refresh between taking its lease and writing its outcome."""

    fence: tokens.Fence
    token: OAuthToken  # the row as leased
    presented: str  # the refresh token it shows the provider
    grant: int  # which authorization it belongs to
    answer: TokenResponse | ProviderError | None = None


def _refreshable(token: OAuthToken | None) -> bool:
    return token is not None and token.state != TokenState.REAUTHORIZATION_REQUIRED


class Interleavings(RuleBasedStateMachine):
    make_connection = manager = manager_client = authserver = None  # set by the test

    @initialize()
    def authorize_once(self) -> None:
        self.connection = self.make_connection()
        self.flights: list[Flight] = []
        self.used: set[str] = set()  # refresh tokens the provider has accepted once (and rotated away from)
        self.grant = 0
        self.reauthorize()

    # --- steps --------------------------------------------------------------------------------------------

    @rule()
    def reauthorize(self) -> None:
        authorize_and_store_token(self.manager_client, self.connection, self.authserver)
        self.grant += 1
        self.newest = shared_token(self.connection).refresh_token

    @precondition(lambda self: shared_token(self.connection) is not None)
    @rule()
    def disconnect(self) -> None:
        services.connection_disconnect(connection=self.connection, actor=self.manager)
        self.newest = None

    @precondition(lambda self: _refreshable(shared_token(self.connection)))
    @rule()
    def start_a_refresh(self) -> None:
        self._start()

    def _start(self) -> Flight | None:
        token = shared_token(self.connection)
        leased = lease.token_lease_take(token, uuid.uuid4().hex)
        if leased is None:  # another flight holds the lease: single flight
            return None
        fence, token = leased
        self.flights.append(Flight(fence, token, token.refresh_token, self.grant))
        return self.flights[-1]

    @precondition(lambda self: any(flight.answer is None for flight in self.flights))
    @rule(data=st.data(), provider_fails=st.booleans())
    def the_provider_answers(self, data, provider_fails: bool) -> None:
        self._answer(data.draw(st.sampled_from([f for f in self.flights if f.answer is None])), provider_fails)

    @precondition(lambda self: any(flight.answer is not None for flight in self.flights))
    @rule(data=st.data())
    def the_outcome_is_written(self, data) -> None:
        self._write(data.draw(st.sampled_from([f for f in self.flights if f.answer is not None])))

    @precondition(lambda self: _refreshable(shared_token(self.connection)))
    @rule(
        meanwhile=st.sampled_from(["disconnect", "reauthorize", "start_a_refresh", "nothing"]),
        answered_first=st.booleans(),
        provider_fails=st.booleans(),
    )
    def a_refresh_meets_another_step(self, meanwhile: str, answered_first: bool, provider_fails: bool) -> None:
        """The races that matter most, in one step: a refresh whose lease is taken, then something else happens
        before or after the provider has processed it, and only then its outcome is written."""
        flight = self._start()
        if flight is None:
            return
        if answered_first:
            self._answer(flight, provider_fails)
        if meanwhile != "disconnect" or shared_token(self.connection) is not None:
            {"disconnect": self.disconnect, "reauthorize": self.reauthorize, "start_a_refresh": self._start}.get(
                meanwhile, lambda: None
            )()
        if not answered_first:
            self._answer(flight, provider_fails)
        self._write(flight)

    def _answer(self, flight: Flight, provider_fails: bool) -> None:
        assert flight.presented not in self.used, "a used refresh token was shown to the provider again"
        if provider_fails:
            self.authserver.set_fault("status_500", count=1, grant_types=["refresh_token"])
        config = tokens.connection_client_config(self.connection)
        try:
            flight.answer = oauth_client.refresh(config, refresh_token=flight.presented)
        except ProviderError as exc:
            flight.answer = exc
        else:
            self.used.add(flight.presented)  # the provider has rotated away from it

    def _write(self, flight: Flight) -> None:
        self.flights.remove(flight)
        if isinstance(flight.answer, ProviderError):
            outcomes.token_refresh_fail(fence=flight.fence, token=flight.token, exc=flight.answer, actor_label="test")
            return
        stored = outcomes.token_refresh_complete(
            fence=flight.fence, token=flight.token, response=flight.answer, actor_label="test"
        )
        if stored is not None:  # else dropped, and revoked at the provider
            assert flight.grant == self.grant, "a refresh of an older grant was written over a newer one"
            self.newest = stored.refresh_token

    # --- what must hold after every step --------------------------------------------------------------------

    @invariant()
    def one_row_at_most_and_none_when_disconnected(self) -> None:
        rows = OAuthToken.objects.filter(connection=self.connection).count()
        assert rows == (0 if self.newest is None else 1)

    @invariant()
    def the_stored_refresh_token_is_the_newest_and_live(self) -> None:
        stored = shared_token(self.connection)
        if stored is None:
            return
        # A refresh the provider has processed but whose outcome is not written yet: the provider is one step ahead.
        answered = [flight for flight in self.flights if isinstance(flight.answer, TokenResponse)]
        if not any(flight.grant == self.grant for flight in answered):
            assert stored.refresh_token == self.newest and stored.refresh_token not in self.used
        if not answered:
            assert self.authserver.live_grants(self.connection.client_id)["refresh_tokens"] == 1

    @invariant()
    def only_a_grant_the_provider_rejected_asks_for_reauthorization(self) -> None:
        # Here the provider rejects only refresh tokens of grants replaced or disconnected: never the stored one's.
        stored = shared_token(self.connection)
        assert stored is None or stored.state != TokenState.REAUTHORIZATION_REQUIRED, stored.last_error

    @invariant()
    def nothing_revoked_is_left_live_once_disconnected(self) -> None:
        if self.newest is None and not any(isinstance(f.answer, TokenResponse) for f in self.flights):
            assert self.authserver.live_grants(self.connection.client_id)["refresh_tokens"] == 0


def test_refresh_interleavings_keep_one_consistent_token(make_connection, manager, manager_client, authserver):
    class Machine(Interleavings):
        pass

    # The loopback server's revocation is per token, and the provider type says so: a replaced grant is revoked there
    # (Provider.revoke_replaced_grant), so one grant at most is ever live.
    per_token = Provider.objects.create(
        slug="per-token", name="Per token", grant_types=["authorization_code"], revoke_replaced_grant=True
    )
    Machine.make_connection = staticmethod(lambda: make_connection(provider=per_token))
    Machine.manager, Machine.manager_client, Machine.authserver = manager, manager_client, authserver
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            database=None,
            derandomize=True,  # the same interleavings on every run: a CI gate, not a lottery
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    assert authserver.stats()["refresh_token_reuses"] == 0
