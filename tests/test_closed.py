"""The end of a connection is data: :class:`miaws.core.model.Closed` decides the log level and
the heartbeat-drop metric, never the text of its reason."""

from __future__ import annotations

import logging

import pytest

from miaws import hookimpl
from miaws.core.model import Closed
from miaws.testing import PluginHarness


@pytest.mark.parametrize(
    ("closed", "level", "drops"),
    [
        (Closed(1006, "dead: missed heartbeat", dead=True), logging.WARNING, 1),
        (Closed(1006, "gone quiet", dead=True), logging.WARNING, 1),  # the flag, not the text
        (Closed(1000, "dead reckoning"), logging.INFO, 0),  # a reason that merely says "dead"
        (Closed(1011, "internal error"), logging.WARNING, 0),
        (Closed(1005), logging.INFO, 0),
    ],
)
def test_disconnect_reads_the_closed_value(
    closed: Closed, level: int, drops: int, caplog: pytest.LogCaptureFixture
) -> None:
    harness = PluginHarness()
    service = harness.service
    client = harness.connect()
    seen: list[tuple[int, str]] = []

    class Recorder:
        @staticmethod
        @hookimpl
        def client_disconnected(client: object, code: int, reason: str) -> None:
            seen.append((code, reason))

    service.registry.pm.register(Recorder(), name="recorder")
    with caplog.at_level(logging.INFO, logger="miaws"):
        service.disconnect(client, closed)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("client disconnected")]
    assert record.levelno == level
    assert record.code == closed.code and record.reason == closed.reason
    assert service.stats.heartbeat_drops == drops
    assert service.stats.disconnects[client.transport, closed.code] == 1
    assert seen == [(closed.code, closed.reason)]  # the hook's signature is unchanged
