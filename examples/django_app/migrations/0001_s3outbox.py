"""s3-outbox's schema as a Django migration: ``manage.py migrate`` applies s3-outbox's pending
migrations inside Django's migration transaction, on the psycopg 3 connection under Django's
(``outbox.migrate`` commits nothing; Django commits or rolls back the whole).

After upgrading s3-outbox to a release that ships a new migration, add another migration like
this one (``outbox.migrate`` applies whatever is pending); ``s3-outbox migrate --check`` in
the deploy pipeline catches a forgotten one.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

import outbox


def migrate_s3outbox(apps: Any, schema_editor: Any) -> None:
    outbox.migrate(schema_editor.connection.connection)


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    # Unapplying keeps s3-outbox's tables (and their data): the reverse does nothing.
    operations = [migrations.RunPython(migrate_s3outbox, migrations.RunPython.noop)]
