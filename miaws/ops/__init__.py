"""What operators use: the HTTP API, the admin API and its keys, metrics, the console,
AsyncAPI, config reload and log formatting."""
