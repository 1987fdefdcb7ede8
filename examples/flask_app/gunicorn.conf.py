"""gunicorn settings for the example app: each worker runs its own agents.

With ``--preload`` the app is imported once, in the master, and workers are
forked from it; no agent runs in the master. Each worker starts its agents as
soon as it boots (instead of on its first request) and stops them on its way
out.
"""


def post_worker_init(worker):
    # Runs in the worker process, after it loaded the app.
    worker.wsgi.extensions["mas"].start()


def worker_exit(server, worker):
    # Runs in the worker process as it exits.
    agents = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("mas")
    if agents is not None:
        agents.stop()
