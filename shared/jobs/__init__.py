"""Jobs: use cases, the job/shard state machine, the repository, the API views."""
