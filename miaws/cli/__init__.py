"""The ``miaws`` command.  No server module is imported until a server command runs."""
