"""Named datasets and their versions: use cases, repository, views."""
