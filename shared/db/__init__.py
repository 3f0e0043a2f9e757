"""Database: models (`shared.db.models`), engine + unit of work (`shared.db.session`),
repositories (`shared.db.repositories`) and migrations (`shared.db.migrate`)."""
