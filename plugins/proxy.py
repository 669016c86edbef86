"""``proxy``: message types answered by an HTTP backend, configured in ``proxy.types``.

Each entry ``{type, url, schema?, timeout?, forward_headers?}`` becomes a message type.  A
message of it (checked against ``schema`` first, when one is named) is POSTed to ``url`` as
JSON with the sender's identity::

    {"type": "order.submit", "message": {...as sent...}, "clientId": "...", "user": "alice",
     "info": ..., "transport": "ws", "rooms": ["lobby"], "headers": {"cookie": "..."}}

The forwarded headers (``forward_headers``, from the client's upgrade request) also go as
HTTP headers of the POST.  The backend's JSON object is the reply, typed ``<type>.result``
unless it names another ``type``; the core adds ``id`` and ``timestamp``.  Its optional
``miaws`` member is not part of the reply but asks miaws to act for the sender first::

    {"type": "order.accepted", "order": 42,
     "miaws": {"join": ["order:42"], "leave": ["cart"],
               "broadcast": [{"room": "order:42", "message": {...}}]}}

joins and leaves happen first (through the Context: the room rules and the join proxy
apply), then the reply is sent, then each broadcast goes to its room (one the sender is in)
as ``{"type":"broadcast","message":...,"from":clientId,"room"}``.  An empty 2xx answer is the
reply ``{"type":"<type>.result"}``.

An error status, an unreadable answer or an unreachable backend is error ``backend-error``;
no answer within the timeout is ``backend-timeout``.  The connection lives on.
"""

from typing import Any

from miaws import Answer, BackendError, Backends, Context, Joined, MessageType, hookimpl

ANY_OBJECT: dict[str, Any] = {"type": "object"}
NOT_FORWARDED_OVER_HTTP = frozenset(
    {"host", "content-length", "content-type", "connection", "transfer-encoding", "upgrade"}
)


def unreadable(why: str) -> BackendError:
    return BackendError(f"Backend answer unreadable: {why}", {"reason": "unreadable answer"})


class ProxiedType:
    """The handler of one ``proxy.types`` entry."""

    def __init__(self, entry: Any, default_timeout: float) -> None:
        self.type: str = entry.type
        self.url: str = entry.url
        self.schema: str | None = entry.schema
        self.timeout: float = entry.timeout or default_timeout
        self.forward = [h.lower() for h in entry.forward_headers]
        self.backends: Backends | None = None  # the node's, given at startup

    async def __call__(self, ctx: Context, message: dict[str, Any]) -> None:
        assert self.backends is not None, "the proxy plugin's startup hook has not run"
        client = ctx.client
        forwarded = {n: client.headers[n] for n in self.forward if n in client.headers}
        body = {"type": self.type, "message": message, **client.identity(), "headers": forwarded}
        http_headers = {n: v for n, v in forwarded.items() if n not in NOT_FORWARDED_OVER_HTTP}
        answer = await self.backends.post(self.url, body, self.timeout, http_headers)
        await self.answer(ctx, answer)

    async def answer(self, ctx: Context, answer: Answer) -> None:
        """Act on what the backend asked, then reply (before the broadcasts)."""
        if not answer.ok:
            raise BackendError(f"Backend answered {answer.status}", {"status": answer.status})
        reply = answer.json()
        if reply is None:
            reply = {}
        if not isinstance(reply, dict):
            raise unreadable("not a JSON object")
        actions = reply.pop("miaws", None) or {}
        if not isinstance(actions, dict):
            raise unreadable("miaws must be an object")
        join, leave = rooms_of(actions, "join"), rooms_of(actions, "leave")
        broadcasts = broadcasts_of(actions)
        kind = reply.setdefault("type", f"{self.type}.result")
        if not isinstance(kind, str) or not kind:
            raise unreadable("type must be a non-empty string")
        for room in join:
            joined = ctx.join(room)
            if not isinstance(joined, Joined):  # an awaitable (join proxy, shared history)
                await joined
        for room in leave:
            if ctx.is_member(room):
                ctx.leave(room)
        ctx.reply(reply)
        for room, payload in broadcasts:
            event = {"type": "broadcast", "message": payload, "from": ctx.client.client_id}
            ctx.broadcast(event, room)


def rooms_of(actions: dict[str, Any], name: str) -> list[str]:
    rooms = actions.get(name, [])
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise unreadable(f"miaws.{name} must be a list of room names")
    return rooms


def broadcasts_of(actions: dict[str, Any]) -> list[tuple[str, Any]]:
    items = actions.get("broadcast", [])
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise unreadable("miaws.broadcast must be an object or a list of them")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("room"), str):
            raise unreadable('miaws.broadcast entries must be {"room": R, "message": ANY}')
        if "message" not in item:
            raise unreadable('miaws.broadcast entries must be {"room": R, "message": ANY}')
        out.append((item["room"], item["message"]))
    return out


_types: list[ProxiedType] = []  # this registry's (a reload loads the module anew)


@hookimpl
def register_message_types(config: Any) -> list[MessageType]:
    _types[:] = [ProxiedType(entry, config.proxy.timeout) for entry in config.proxy.types]
    return [
        MessageType(
            t.type,
            t,
            schema=t.schema or ANY_OBJECT,
            description=f"Answered by the backend at {t.url}.",
            replies={f"{t.type}.result": ANY_OBJECT},
        )
        for t in _types
    ]


@hookimpl
def startup(service: Any) -> None:
    for t in _types:
        t.backends = service.backends
