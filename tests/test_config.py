"""Configuration: defaults, precedence, partial files, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from miaws.config import BUILTIN_PLUGINS, ConfigError, build_settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_equals_defaults() -> None:
    """config.yaml as shipped sets exactly the built-in defaults."""
    shipped = load_settings(ROOT / "config.yaml", environ={})
    defaults = build_settings({}, environ={})
    for section in ("server", "heartbeat", "limits", "plugins", "logging"):
        assert getattr(shipped, section) == getattr(defaults, section), section


def test_defaults() -> None:
    """No file: port 3001, /ws, 30 s heartbeat, 64 KiB limit, every built-in plugin."""
    s = build_settings({}, environ={})
    assert (s.server.port, s.server.ws_path) == (3001, "/ws")
    assert (s.heartbeat.interval, s.heartbeat.timeout) == (30, 30)
    assert s.limits.max_message_bytes == 65536
    assert tuple(s.plugins.enabled) == BUILTIN_PLUGINS


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    """A file that sets one key leaves the others at their defaults."""
    f = tmp_path / "c.yaml"
    f.write_text("heartbeat:\n  interval: 10\n  timeout: 5\n")
    s = load_settings(f, environ={})
    assert (s.heartbeat.interval, s.heartbeat.timeout) == (10, 5)
    assert s.server.port == 3001 and tuple(s.plugins.enabled) == BUILTIN_PLUGINS


def test_env_port_beats_file(tmp_path: Path) -> None:
    """PORT in the environment overrides server.port from the file."""
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: 4000\n")
    assert load_settings(f, environ={}).server.port == 4000
    assert load_settings(f, environ={"PORT": "4100"}).server.port == 4100


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    """plugins.paths and schemas.path in a file are resolved against the file's directory."""
    f = tmp_path / "c.yaml"
    f.write_text("plugins:\n  paths: [mine]\nschemas:\n  path: s\n")
    s = load_settings(f, environ={})
    assert s.plugins.paths == [str(tmp_path / "mine")] and s.schemas.path == str(tmp_path / "s")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "heartbeat:\n  timeout: x\n",
            "heartbeat.timeout has value 'x'; expected a number of seconds",
        ),
        ("server:\n  prot: 1\n", "server.prot is not a known setting"),
        ("sever:\n  port: 1\n", "sever is not a known section"),
        ("server:\n  port: '80'\n", "server.port has value '80'; expected a port number"),
        ("server:\n  port: 70000\n", "server.port has value 70000"),
        (
            "heartbeat:\n  interval: 10\n  timeout: 20\n",
            "heartbeat.timeout has value 20; expected at most",
        ),
        ("limits:\n  max_message_bytes: true\n", "limits.max_message_bytes has value True"),
        ("plugins:\n  enabled: echo\n", "plugins.enabled has value 'echo'; expected a list"),
        ("logging:\n  level: loud\n", "logging.level has value 'loud'; expected one of debug"),
        ("server: [1]\n", "server has value [1]; expected a mapping"),
        ("- 1\n", "the file must hold a mapping"),
        ("server:\n  port: [\n", "not valid YAML at line"),
        # an entry of a list of mappings: which entry, which field
        ("rooms:\n  rules:\n    - {match: 'a*', presense: true}\n", "rooms.rules[0].presense is"),
        (
            "rooms:\n  rules:\n    - {match: a}\n    - {match: 'b*', history: {size: x}}\n",
            "rooms.rules[1].history.size has value 'x'; expected a whole number",
        ),
        ("rooms:\n  rules:\n    - {presence: true}\n", "expected the fields match"),
        (
            "webhooks:\n  endpoints:\n"
            "    - {url: 'http://a b/', secret: s, events: [room-vacated]}\n",
            "webhooks.endpoints[0].url has value 'http://a b/'",
        ),
        (
            "broker:\n  type: redis-cluster\n"
            "rooms:\n  rules:\n    - {match: 'a*', presence: true}\n",
            "rooms.rules[0].presence is true; expected none with broker.type redis-cluster",
        ),
        (
            "broker:\n  type: redis-cluster\nwebhooks:\n  - url: http://127.0.0.1:9/\n"
            "    secret: s\n    events: [client-connected, room-vacated]\n",
            "webhooks.endpoints[0].events has 'room-vacated'",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is one ConfigError line naming the file and the key."""
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(f, environ={})
    assert message in str(info.value) and str(f) in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_env_port() -> None:
    """A PORT that is not a number, or not a port, is named as the environment's fault."""
    with pytest.raises(ConfigError, match="environment: PORT .* has value 'abc'"):
        build_settings({}, environ={"PORT": "abc"})
    with pytest.raises(
        ConfigError, match=r"^environment: PORT \(for server.port\) has value 70000"
    ):
        build_settings({}, source="config.yaml", environ={"PORT": "70000"})


@pytest.mark.parametrize(
    "text",
    [
        "heartbeat:\n  timeout: x\n",
        "plugins:\n  enabled: [ping, nosuch]\n",
        "schemas:\n  path: /nonexistent-dir\n",
        "server:\n  header_timeout: 0\n",
        "server:\n  idle_timeout: -1\n",
        # YAML's infinities and NaN pass a `< 0` check; they crashed start-up, the first
        # upgrade or the SIGTERM drain
        "limits:\n  messages_per_second: .inf\n",
        "limits:\n  connection_rate: .inf\n",
        "shutdown:\n  drain_seconds: .nan\n",
        "limits:\n  burst: 1" + "0" * 400 + "\n",  # an OverflowError building the limiter
        "broker:\n  type: redis\n  heartbeat: .inf\n",
        "rooms:\n  leave_delay: .inf\n",
        "rooms:\n  rules:\n    - {match: 'a*', history: {size: 3, ttl: .nan}}\n",
    ],
)
def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, text: str) -> None:
    """miaws serve with a bad file prints one line (no traceback) and exits with code 2."""
    f = tmp_path / "config.yaml"
    f.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "miaws", "serve", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miaws: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_env_var_picks_the_file(tmp_path: Path) -> None:
    """MIAWS_CONFIG names the file when --config is not given."""
    f = tmp_path / "other.yaml"
    f.write_text(yaml.safe_dump({"server": {"port": "nope"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "miaws", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "MIAWS_CONFIG": str(f)},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "other.yaml: server.port" in proc.stderr
