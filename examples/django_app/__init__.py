"""A minimal Django project on s3-outbox: the library's calls inside ``transaction.atomic()``.

Run it (schema applied with ``s3-outbox migrate``, settings in ``S3OUTBOX_*`` variables)::

    DJANGO_SETTINGS_MODULE=examples.django_app.settings django-admin runserver 127.0.0.1:8000
"""
