"""Calls from miaws to the operator's HTTP backends: the connection pool and circuit breaker
(:mod:`miaws.integration.backend`) and the join proxy (:mod:`miaws.integration.join_proxy`).

Stands on the core only; the transport (``auth.mode: proxy``), the Service and the built-in
``proxy`` plugin (through ``miaws.Backends``) use it.
"""
