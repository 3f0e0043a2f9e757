"""Object storage: the store interface (S3 / local folder) and every object key."""
