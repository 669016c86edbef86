"""The built-in message-type plugins, installed as ``miaws.bundled_plugins``.

miaws loads each ``*.py`` file here by path, exactly as it loads a team's plugin file, and
registers it under its file stem.  Nothing imports this package.
"""
