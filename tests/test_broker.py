"""The broker settings, the memory broker's cluster answers, and cross-node message encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from miaws.broker import make_broker
from miaws.broker.redis import RemoteEncoded, redact
from miaws.config import ConfigError, build_settings
from miaws.core.model import Encoded
from miaws.transport.frames import text_frame


@pytest.mark.parametrize(
    ("broker", "message"),
    [
        (
            {"type": "kafka"},
            "test: broker.type has value 'kafka'; expected one of memory, redis, redis-cluster",
        ),
        (
            {"url": "http://r:6379"},
            "test: broker.url has value 'http://r:6379'; expected a redis://, rediss:// or "
            "unix:// URL",
        ),
        (
            {"channel_prefix": "a b"},
            "test: broker.channel_prefix has value 'a b'; expected 1 to 64 characters of "
            "[A-Za-z0-9_.:-]",
        ),
        (
            {"heartbeat": 0},
            "test: broker.heartbeat has value 0; expected a positive number of seconds",
        ),
    ],
)
def test_bad_broker_settings_name_the_key(broker: dict[str, Any], message: str) -> None:
    """A bad broker setting stops start-up with one line naming the key."""
    with pytest.raises(ConfigError) as info:
        build_settings({"broker": broker}, source="test", environ={})
    assert str(info.value) == message


def test_unparsable_redis_url_is_a_config_error() -> None:
    """A URL redis-py cannot parse stops start-up with one line, not a traceback."""
    settings = build_settings(
        {"broker": {"type": "redis", "url": "redis://h:port/0"}}, source="test", environ={}
    )
    with pytest.raises(ConfigError) as info:
        make_broker(settings)
    assert str(info.value).startswith("test: broker.url has value 'redis://h:port/0'; Port ")


def test_redis_url_from_the_environment() -> None:
    """REDIS_URL overrides broker.url from the file; memory is the default type."""
    s = build_settings({"broker": {"url": "redis://a:1/0"}}, environ={"REDIS_URL": "redis://b:2/1"})
    assert (s.broker.type, s.broker.url) == ("memory", "redis://b:2/1")


def test_remote_message_keeps_the_senders_bytes() -> None:
    """A message from another node is sent with the exact bytes its node encoded."""
    original = Encoded({"type": "broadcast", "message": "ünï ✓" * 50, "timestamp": "t"})
    remote = RemoteEncoded(original.data)
    assert text_frame(remote) == text_frame(original)
    assert remote.payload == original.payload


def test_redact_hides_the_password() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


async def test_memory_broker_has_no_cluster_section(
    http_server_client: Any, ws_connect: Any
) -> None:
    """With the memory broker, /health keeps its shape and the cluster scope is this process."""
    peer = await ws_connect()
    await peer.request({"type": "join-room", "room": "a"})
    health = json.loads((await http_server_client.fetch("/health")).body)
    assert health["status"] == "ok" and "cluster" not in health
    body = json.loads((await http_server_client.fetch("/api/rooms?scope=cluster")).body)
    assert body == {"a": 1}
    response = await http_server_client.fetch("/api/rooms?scope=galaxy", raise_error=False)
    assert response.code == 400
    assert json.loads(response.body) == {
        "error": "scope has value 'galaxy'; expected local or cluster"
    }


def test_the_brokers_never_import_each_other() -> None:
    """memory.py and redis.py each import only the interface; choosing memory loads no redis."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    broker_dir = Path(__file__).resolve().parent.parent / "miaws" / "broker"
    for name, other in (("memory", "miaws.broker.redis"), ("redis", "miaws.broker.memory")):
        tree = ast.parse((broker_dir / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert other not in imported and "miaws.broker.base" in imported, name
    code = (
        "import sys; from miaws.config import build_settings; "
        "from miaws.broker import make_broker; b = make_broker(build_settings({}, environ={})); "
        "print(type(b).__name__, 'redis' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["MemoryBroker", "False"]


async def test_redis_broker_is_subscribed_and_up_when_start_returns(redis_server: Any) -> None:
    """start() returns once the subscription is in place, so a node takes clients with
    cross-node delivery working.  Before the fix Subscription.sync() always waited out its
    timeout (asyncio.wait's default is ALL_COMPLETED), start() gave up first and the node
    came up degraded: the cause of test_server_side_publish_reaches_every_node's failures."""
    settings = build_settings(
        {"broker": {"type": "redis", "url": redis_server.url, "heartbeat": 0.5}}, environ={}
    )
    broker = make_broker(settings)
    await broker.start()
    try:
        assert broker.status() == "ok"
    finally:
        await broker.close()
