"""A minimal Django project on s3-outbox: the library's calls inside ``transaction.atomic()``.

Run it (settings in ``S3OUTBOX_*`` variables; ``migrate`` applies s3-outbox's schema through
the Django migration ``migrations/0001_s3outbox.py``, as ``s3-outbox migrate`` would)::

    export DJANGO_SETTINGS_MODULE=examples.django_app.settings
    django-admin migrate
    django-admin runserver 127.0.0.1:8000
"""
