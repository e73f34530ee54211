"""The AWS functions served locally: ``make serve CLOUD=aws`` (``python -m functions.aws.local``).

The real Lambda code (``functions.aws.api.handle``, ``functions.aws.batch.handler``) runs against moto in
server mode holding what the stack deploys, behind an HTTP front that plays API Gateway's HTTP API. No
Docker (``sam local`` needs it), no AWS account: fake credentials, everything on 127.0.0.1.

- ``stack``: moto (every call atomic, as DynamoDB's are) and the stack's resources; the functions' env.
- ``events``: HTTP request -> payload 2.0 event; Lambda proxy result -> HTTP response; API Gateway's errors.
- ``containers``: simulated Lambda containers, one invocation at a time each, a runtime each, a pool.
- ``front``: the threaded HTTP server (API Gateway) in front of the api containers.
- ``consumer``: the SQS event source of the batch function.
- ``models``: the local runtime's models behind its OpenAI-compatible API, registered as ``openai`` routes.
- ``server``: ``LocalAws``, which starts and stops all of the above; ``__main__``: the command.

Development only: nothing here runs on Lambda, and it imports moto (a dev dependency).
"""
