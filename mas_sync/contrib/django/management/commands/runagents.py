"""``python manage.py runagents``: run the declared agents in a process of their own.

The first SIGTERM or SIGINT (Ctrl-C) stops the agents cleanly (each
deregisters) and the command exits 0; a second one exits at once with status 1
(see :func:`mas_sync.stop_on_signals`).

``--metrics-port P`` also serves the agents' Prometheus metrics at
``http://127.0.0.1:P/metrics`` (``--metrics-addr`` for another address; the
``metrics`` extra), until the agents stop.
"""

from __future__ import annotations

from typing import Any, Optional

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mas_sync._redis import redact_url
from mas_sync import MASError
from mas_sync.contrib.django import _settings
from mas_sync.contrib.django._runtime import mas
from mas_sync.signals import SignalStop, stop_on_signals


class Command(BaseCommand):
    help = (
        "Run the agents declared in MAS_AGENTS and in code until SIGTERM or SIGINT;"
        " the first signal stops them cleanly, a second exits at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--agent", action="append", dest="agent_names", metavar="NAME",
            help="run only this declared agent (repeat for more); default: all",
        )
        parser.add_argument("--redis-url", help="Redis to use (default: MAS_REDIS_URL)")
        parser.add_argument(
            "--id-format",
            help="how agent ids are made of names, with {name}, {host}, {pid}"
            " (default: MAS_AGENT_ID_FORMAT)",
        )
        parser.add_argument(
            "--metrics-port", type=int, metavar="P",
            help="serve the agents' Prometheus metrics at http://ADDR:P/metrics"
            " (needs mas_sync[metrics])",
        )
        parser.add_argument(
            "--metrics-addr", default="127.0.0.1", metavar="ADDR",
            help="the address of --metrics-port (default: 127.0.0.1, this host only)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Runs in the main thread, which waits for a signal while the agents work."""
        # Handlers first: a signal that comes while the agents start is not lost.
        with stop_on_signals(exit_process=False) as stop:
            self._run(stop, options)

    def _run(self, stop: SignalStop, options: Any) -> None:
        metrics_port: Optional[int] = options.get("metrics_port")
        if metrics_port is not None:
            if not 0 <= metrics_port <= 65535:
                raise CommandError(f"--metrics-port must be between 0 and 65535, not {metrics_port}")
            try:
                from mas_sync.metrics import start_metrics_server
            except ImportError as exc:
                raise CommandError(str(exc)) from None
        try:
            agents = _settings.build_process_agents(
                mas.declared(), redis_url=options["redis_url"], id_format=options["id_format"]
            )
            if not _settings.declared_specs(agents):
                raise CommandError("no agents are declared: add some to MAS_AGENTS, or in code")
            # This process runs the agents: mas.get() in their handlers finds them.
            mas._run_here(agents)
            running = agents.start(options["agent_names"])
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        except (ImproperlyConfigured, MASError) as exc:
            raise CommandError(str(exc)) from None
        server = None
        try:
            if metrics_port is not None:
                try:
                    server = start_metrics_server(metrics_port, options["metrics_addr"])
                except OSError as exc:
                    raise CommandError(
                        f"cannot serve the metrics on {options['metrics_addr']}:{metrics_port}:"
                        f" {exc}"
                    ) from None
                self.stdout.write(f"Metrics: {server.url}")
            ids = ", ".join(agent.id for agent in running.values())
            self.stdout.write(
                f"Running {len(running)} agent(s) on {redact_url(agents.redis_url)}: {ids}."
                " SIGTERM or Ctrl-C stops them."
            )
            self.stdout.flush()
            while not stop.wait(1.0):
                pass
            self.stdout.write("Stopping the agents ...")
            self.stdout.flush()
        finally:
            if server is not None:
                server.close()
            agents.stop()
        self.stdout.write("Stopped.")
