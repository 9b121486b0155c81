"""Training: a user's CSV (``dataset``), one model version fitted and evaluated (``trainer``),
and the REST API's jobs run in worker processes (``jobs``)."""
