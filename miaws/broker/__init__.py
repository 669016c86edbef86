"""How a message reaches the clients of every node: the broker interface and its memory and
Redis implementations.  Nothing outside this package knows which one runs."""
