"""The result store: prediction history, feedback, the result cache, async jobs and recordings.

It hangs off the side of the request path: answers never wait on the database (``writer.py``
batches inserts on a thread and spools to disk while the database is away).
"""
