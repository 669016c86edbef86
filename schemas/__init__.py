"""The bundled JSON Schemas, one per message type, installed as ``miaws.bundled_schemas``."""
