"""The sans-I/O core: the model, dispatch, rooms, the local registry, history, plugins,
schemas, rate limits, clock, stats and stopping background tasks.

Nothing here imports an I/O or file-format library (tornado, socketio, redis, yaml, jwt) or
:mod:`miaws.config`; ``tests/test_layers.py`` keeps it so.
"""
