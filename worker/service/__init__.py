"""Domain functions run by the Celery tasks (and by the embedded mode's in-process
dispatcher): shards, finalisation, reconciliation. Testable without a broker."""
