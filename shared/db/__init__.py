"""Database: models (`shared.db.models`), engine + unit of work (`shared.db.session`), the batch upsert
(`shared.db.upsert`) and migrations (`shared.db.migrate`). Queries live in each domain's `repository.py`."""
