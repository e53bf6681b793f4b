"""The scaled-out deployment without containers (tests/deploy/scale_out.py): 2 web processes, 3 workers and beat
keep 1,000 sixty-second tokens fresh. What is checked must hold however busy the machine is:

- every token refreshed before it expired (no poll saw an expired token; no answer without time left);
- no token refreshed twice in one cycle (the gap between two refreshes of one token is at least margin - beat
  interval, so at most refreshes_allowed() per token: more would be a refresh loop), and the provider called
  exactly once per refresh, by a worker, with no failure;
- every token-endpoint call answered 200 with a token the provider accepts.

SCALE_OUT_SECONDS sets how long beat runs: 60 s by default, two refresh cycles of the tokens, enough for all of the
above; bench/scale_out.py runs the long form. Rates, the spread over the workers, latencies and CPU are machine-speed
figures: bench/scale_out.py prints them (set SCALE_OUT_FIGURES to a file path and this test writes them there too).
"""

import os
from pathlib import Path

import pytest

from tests.deploy import scale_out
from tests.support.authserver import AuthServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SECONDS = int(os.environ.get("SCALE_OUT_SECONDS", "60"))


@pytest.fixture
def sixty_second_server(tmp_path):
    (tmp_path / "authserver").mkdir()
    server = AuthServer(access_token_lifetime=scale_out.LIFETIME, log_dir=str(tmp_path / "authserver")).start()
    try:
        yield server
    finally:
        server.stop()


def test_two_web_three_workers_one_beat_keep_a_thousand_sixty_second_tokens_fresh(make_stack, sixty_second_server):
    run = scale_out.run(make_stack, sixty_second_server, SECONDS)
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
