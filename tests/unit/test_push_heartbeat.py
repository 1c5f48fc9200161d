"""Each websocket pings at its own period, so sockets that joined together do not ping
together (services/push/handlers.py)."""

from __future__ import annotations

import pytest

from services.push.handlers import heartbeat_period


@pytest.mark.parametrize(("draw", "period"), [(0.0, 10.0), (0.5, 15.0), (0.999, 19.99)])
def test_period_runs_from_half_to_the_whole_setting(draw: float, period: float) -> None:
    assert heartbeat_period(20.0, draw) == pytest.approx(period)


def test_sockets_draw_different_periods_inside_the_bounds() -> None:
    periods = [heartbeat_period(20.0) for _ in range(200)]
    assert all(10.0 <= p <= 20.0 for p in periods)
    # 200 draws from a 10 s range: spread over most of it, hardly two alike.
    assert max(periods) - min(periods) > 8.0
    assert len(set(periods)) > 190
