"""The scaled-out deployment without containers (tests/deploy/scale_out.py): 2 web processes, 3 workers and beat
keep 1,000 tokens fresh while bots ask for them. The run ends on events, not after a time: every token refreshed
(scale_out.REQUIRED_REFRESHES times), then two more sweeps and every refresh task ended; how fast that goes is the
machine's business (bench/scale_out.py prints it). What is checked is what the engine promises:

- every token refreshed before it expired (no poll saw an expired token; no answer without time left; the first
  refresh before the seeded expiry), each one the required number of times;
- no token refreshed twice in one cycle (the gap between two refreshes of one token is at least MIN_GAP, so at most
  refreshes_allowed() per token: exactly once in the test's run; more would be a refresh loop, which the sweeps run
  after the last refresh would show), and the provider called exactly once per refresh, by a worker, with no failure;
- nothing lost: every provider call is one new token stored and one refresh audited;
- every token-endpoint call answered 200 with a token the provider accepts.

The scenario's tokens live scale_out.LIFETIME (240 s): long enough that a busy machine refreshing the thousand
tokens at a fifth of an idle one's speed still does it before any expires (the module's docstring). bench/scale_out.py
runs the long form (60-second tokens, SCALE_OUT_LIFETIME, for at least SCALE_OUT_SECONDS) and prints the figures
(set SCALE_OUT_FIGURES to a file path and this test writes them there too).
"""

import os
from pathlib import Path

import pytest

from tests.deploy import scale_out

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MIN_SECONDS = int(os.environ.get("SCALE_OUT_SECONDS", "0"))  # the bench's run length; the test ends on events


def test_two_web_three_workers_one_beat_keep_a_thousand_tokens_fresh(make_stack, short_lived_authserver):
    run = scale_out.run(make_stack, short_lived_authserver(scale_out.LIFETIME), MIN_SECONDS)
    result = scale_out.outcome_of(run)
    figures = scale_out.figures(run, result)
    if os.environ.get("SCALE_OUT_FIGURES"):
        Path(os.environ["SCALE_OUT_FIGURES"]).write_text(figures)
    report = f"{figures}\n{run.stack.logs()}"

    # every token refreshed before it expired
    assert not run.expired, f"{len(run.expired)} tokens were seen expired{report}"
    assert run.least_left > 0, report
    assert not result.late_first, f"first refresh after the seeded expiry: {result.late_first[:10]}{report}"
    assert max(result.gaps, default=0.0) < scale_out.LIFETIME - scale_out.GAP_TOLERANCE, report
    # each token refreshed as often as the run waited for, and nothing lost: one token stored per provider call
    assert run.not_yet_refreshed == 0, report
    assert min(result.refresh_counts) >= scale_out.REQUIRED_REFRESHES, report
    assert run.generations_gained == result.total_refreshes == result.provider_calls, report
    # no token refreshed twice in one cycle, and one provider call per refresh (single flight), all by workers
    assert min(result.gaps, default=scale_out.MIN_GAP) >= scale_out.MIN_GAP - scale_out.GAP_TOLERANCE, report
    assert max(result.refresh_counts) <= scale_out.refreshes_allowed(result.window_seconds)[1], report
    assert result.provider_calls == result.total_refreshes, report
    assert result.other_grants == {
        "authorization_code": 0,
        "refresh_token": 0,
        "jwt_bearer": 0,
        "device_code": 0,
        "other": 0,
    }, report
    assert result.failures == 0 and result.raised == 0, report
    assert result.refresh_actors == {"refresh worker"}, report
    # every token-endpoint call answered, through both web processes, each token real and unexpired
    assert run.calls and not result.bad, f"{[(c.web, c.status) for c in result.bad[:10]]}{report}"
    assert {call.web for call in result.answered} == set(scale_out.WEBS), report
    assert not result.no_time_left, report
    assert result.shown and not result.refused, report
    assert result.sample_accepted == result.sample_size, report
