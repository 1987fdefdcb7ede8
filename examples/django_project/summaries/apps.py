from django.apps import AppConfig


class SummariesConfig(AppConfig):
    name = "summaries"

    def ready(self) -> None:
        # Declares the agents defined in code, in every process.
        from . import agents  # noqa: F401
