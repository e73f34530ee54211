"""Batches: JSONL files of requests run line by line under the tenant's limits, resumable, metered once per line.

``lines`` parses one line into a call; ``execute`` runs it (rate limits waited out, quota refusals deferred);
``runner`` streams a whole batch through bounded workers; ``records`` maps jobs and files to documents;
``output`` writes the result and error lines; ``objects`` starts a batch from an object in a bucket.
"""
