"""Azure Functions (Python v2 model): the function app, its bootstrap and its triggers; ``local/`` serves it."""
