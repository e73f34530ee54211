"""The Google Cloud functions served locally: ``make serve CLOUD=gcp`` (``python -m functions.gcp.local``).

The real ``api`` function runs under functions-framework (its Flask app, ``create_app``) on a threaded WSGI
server, against the Firestore emulator and the Cloud Storage emulator this process starts and stops. No Docker,
no Google account: anonymous credentials, everything on 127.0.0.1.

- ``emulators``: the Firestore emulator (the Cloud SDK's launcher, in a process group of its own, killed whole
  on exit) and the Cloud Storage emulator (gcp-storage-emulator, in this process, in memory).
- ``trigger``: the Eventarc trigger's stand-in: polls the bucket, delivers each new object's "object finalized"
  CloudEvent to the real ``batch`` function (functions-framework's CloudEvent app); a failed delivery is retried.
- ``server``: ``LocalGcp``, which starts and stops all of the above (and the local models, served by
  ``textnlp serve`` as OpenAI-compatible routes); ``__main__``: the command.

Development only: nothing here runs on Cloud Run.
"""
