"""The transports: the native WebSocket endpoint (frames, protocol, upgrade path) and the
Socket.IO bridge, over the core, with one admission path for both."""
