from django.urls import path

from summaries import views

urlpatterns = [
    path("summarize", views.summarize),
    path("agents", views.agents),
]
