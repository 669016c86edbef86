"""``miaws listen`` and ``miaws send`` as a user runs them, against a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

import pytest
from conftest import Connect
from helpers import eventually

from miaws.client import MiawsClient
from miaws.service import Service


async def miaws(*args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "miaws",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.config({"history": {"rooms": [{"match": "feed", "size": 10, "ttl": 60}]}})
async def test_listen_prints_room_messages_as_json_lines(
    ws_url: str, ws_connect: Connect, service: Service
) -> None:
    """listen --room R --count 3 prints the room's next three messages, one per line."""
    listener = asyncio.ensure_future(miaws("listen", ws_url, "--room", "feed", "--count", "3"))
    await eventually(lambda: service.rooms_info().get("feed") == 1, timeout=10)
    pub = await ws_connect()
    await pub.request({"type": "join-room", "room": "feed"})
    for i in range(3):
        await pub.send({"type": "broadcast", "room": "feed", "message": i})
    code, out, err = await listener
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert [(m["message"], m["seq"]) for m in lines] == [(0, 1), (1, 2), (2, 3)]


async def test_listen_stops_at_timeout(ws_url: str) -> None:
    """Fewer messages than --count before --timeout: nothing printed, exit 1."""
    code, out, _ = await miaws(
        "listen", ws_url, "--room", "quiet", "--count", "1", "--timeout", "0.5"
    )
    assert (code, out) == (1, "")


async def test_send_prints_the_reply(ws_url: str) -> None:
    """send prints the reply to its message; an error reply exits 1."""
    code, out, _ = await miaws("send", ws_url, '{"type":"echo","message":"hi","id":9}')
    reply = json.loads(out)
    assert (code, reply["type"], reply["original"], reply["id"]) == (0, "echo", "hi", 9)
    code, out, _ = await miaws(
        "send", ws_url, '{"type":"broadcast","room":"r","message":1}', "--no-reply"
    )
    assert code == 1 and json.loads(out)["code"] == "not-in-room"
    code, out, _ = await miaws(
        "send", ws_url, '{"type":"broadcast","room":"r","message":1}', "--join", "r", "--no-reply"
    )
    assert (code, out) == (0, "")


async def test_send_rejects_bad_input_and_unreachable_servers(ws_url: str) -> None:
    """Not JSON: exit 2 naming the problem; no server: exit 1 saying so."""
    code, _, err = await miaws("send", ws_url, "{oops")
    assert code == 2 and "not valid JSON" in err
    dead = ws_url.rsplit(":", 1)[0] + ":1/ws"
    code, _, err = await miaws("send", dead, '{"type":"ping"}', "--timeout", "1")
    assert code == 1 and "cannot connect" in err


async def test_miaws_own_clients_close_with_1000(
    ws_url: str, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """send, listen, health, check and MiawsClient end their connections with 1000 (normal
    closure): no 1011 (a handler raised, which operators alert on), no 1005 per probe."""
    caplog.set_level(logging.INFO, "miaws")
    assert (await miaws("send", ws_url, '{"type":"ping"}'))[0] == 0
    assert (await miaws("listen", ws_url, "--room", "r", "--timeout", "0.2"))[0] == 0
    assert (await miaws("health", ws_url))[0] == 0
    assert (await miaws("check", ws_url))[0] == 0
    async with MiawsClient(ws_url) as client:
        await client.join("r")
    await eventually(lambda: service.connected_count() == 0, timeout=10)
    codes = {code for (_, code) in service.stats.disconnects}
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    # check's size and binary scenarios earn 1009 and 1003 from the server, as they should
    assert codes == {1000, 1003, 1009}, lines
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], lines


@pytest.mark.config({"limits": {"max_message_bytes": 100}})
async def test_send_says_in_one_line_when_the_server_closes(ws_url: str) -> None:
    """The server closes instead of replying (here: 1009, too big): one line, exit 1."""
    code, out, err = await miaws("send", ws_url, json.dumps({"type": "echo", "message": "x" * 200}))
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1 and "1009" in err and "Traceback" not in err, err


TOKENS = {"auth": {"mode": "token", "tokens": {"t1": "alice"}}}


async def timed(*args: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, out, err = await miaws(*args)
    return code, out, err, time.monotonic() - started


@pytest.mark.config(TOKENS)
async def test_a_refused_upgrade_is_one_line_at_once(ws_url: str) -> None:
    """401 (no token) or 404 (a wrong path): health, check, send and listen each say the
    status and reason in one line, exit 1, no traceback, without waiting for --timeout."""
    wrong_path = ws_url.removesuffix("/ws") + "/nope"
    ping = '{"type":"ping"}'
    for url, status in ((ws_url, "HTTP 401 Unauthorized"), (wrong_path, "HTTP 404 Not Found")):
        refused = f"{url} refused the upgrade: {status}"
        for args in (
            ("health", url, "--timeout", "5"),
            ("check", url, "--timeout", "5"),
            ("send", url, ping, "--timeout", "5"),
            ("listen", url, "--room", "r", "--timeout", "5"),
        ):
            code, out, err, took = await timed(*args)
            shown = (out + err).strip().splitlines()
            assert code == 1 and "Traceback" not in err, (args, out, err)
            assert len(shown) == 1 and refused in shown[0], (args, out, err)
            assert took < 3.0, (args, took)
    code, out, _, _ = await timed("health", ws_url)
    assert out == (
        f"FAIL {ws_url} refused the upgrade: HTTP 401 Unauthorized "
        "(authentication required: no token)\n"
    )
    code, out, _ = await miaws("send", f"{ws_url}?token=t1", ping)
    assert code == 0 and json.loads(out)["type"] == "pong"


@pytest.mark.config({"limits": {"max_connections_per_ip": 1}})
async def test_listen_retries_429_send_does_not(ws_url: str, ws_connect: Connect) -> None:
    """A 429 (the address's connection cap) may pass: listen retries until it connects;
    send, a one-shot command, says the refusal at once."""
    held = await ws_connect()
    code, out, err, took = await timed("send", ws_url, '{"type":"ping"}')
    assert code == 1 and out == "" and "Traceback" not in err
    assert err == (
        f"miaws: {ws_url} refused the upgrade: HTTP 429 Too Many Requests "
        "(too many connections from your address)\n"
    )
    assert took < 3.0
    listener = asyncio.ensure_future(timed("listen", ws_url, "--room", "r", "--timeout", "3"))
    await asyncio.sleep(1.0)
    held.close()
    code, out, err, took = await listener
    assert (code, out, err) == (0, "", ""), err
    assert took >= 2.5  # it connected and listened to the end of --timeout


async def test_options_go_anywhere_among_the_positionals(ws_url: str, service: Service) -> None:
    """send URL --join R JSON (an option between the two positionals) works as JSON last
    does; send JSON alone still takes the default URL (here: $PORT's)."""
    broadcast = '{"type":"broadcast","room":"r","message":1}'
    code, out, err = await miaws("send", ws_url, "--join", "r", broadcast, "--no-reply")
    assert (code, out, err) == (0, "", "")
    code, out, err = await miaws("send", "--timeout", "1", ws_url, "--join", "r", broadcast)
    assert code == 1 and "no reply within 1s" in err and "unrecognized" not in err, err
    port = ws_url.rsplit(":", 1)[1].split("/")[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "miaws",
        "send",
        '{"type":"ping"}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PORT": port},
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0 and json.loads(out_b)["type"] == "pong", err_b


@pytest.mark.config(TOKENS)
async def test_the_client_library_says_a_refusal_at_once(ws_url: str) -> None:
    """MiawsClient.connect() raises UpgradeRefused with the status at once for a 401 (not a
    TimeoutError after open_timeout); with a token it connects."""
    from miaws.client import MiawsClient, UpgradeRefused

    client = MiawsClient(ws_url, open_timeout=5)
    started = time.monotonic()
    with pytest.raises(UpgradeRefused) as info:
        await client.connect()
    assert time.monotonic() - started < 2.0
    assert info.value.status == 401 and "HTTP 401" in str(info.value)
    assert client.last_refusal is info.value
    async with MiawsClient(f"{ws_url}?token=t1", open_timeout=5) as ok:
        assert (await ok.request({"type": "ping"}))["type"] == "pong"
