"""The Azure functions served locally: ``make serve CLOUD=azure`` (``python -m functions.azure.local``).

Azure Functions Core Tools cannot be installed here (its npm package downloads the host from a CDN), so a small
stand-in of the Functions host serves the real function app: it builds ``azure.functions.HttpRequest`` objects and
calls the function objects the Python worker would index (``app.get_functions()``), on one event loop as the
worker does, against Azurite and a Cosmos DB server this process starts and stops. No Docker, no Azure account:
the emulators' keys, everything on 127.0.0.1.

- ``emulators``: Azurite (blob service) and the Cosmos DB server, npm packages of tools/emulators, each in a
  process group of its own, in memory, killed whole on exit.
- ``host``: the Functions host's stand-in (ASGI under uvicorn): HTTP to HttpRequest, the ``api`` function,
  HttpResponse back through the v2 model's own converter.
- ``trigger``: the Event Grid subscription's stand-in: polls the container's ``batch-input/`` and delivers each new
  blob's BlobCreated event to the real ``batch`` function; a failed invocation is delivered again.
- ``server``: ``LocalAzure``, which starts and stops all of the above (and the local models, served by
  ``textnlp serve`` as OpenAI-compatible routes: functions/local/model_server.py); ``__main__``: the command.

Development only: nothing here is deployed.
"""
