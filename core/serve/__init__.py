"""``manet serve``: the HTTP search service (FastAPI on uvicorn) and its search page.

:func:`manet.serve.app.create_app` builds the app, :class:`manet.serve.runner.ServerThread` runs
it on a loopback port from a thread, :class:`manet.serve.batcher.MicroBatcher` groups concurrent
queries into one forward pass. Nothing is imported here, so importing the package is free.
"""
