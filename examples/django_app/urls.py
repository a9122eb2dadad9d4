"""Routes of the example."""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("documents", views.request_upload),
    path("documents/<str:document_id>/confirm", views.confirm),
    path("documents/<str:document_id>", views.get_document),
]
