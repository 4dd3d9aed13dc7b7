"""The asynchronous inference API (FastAPI), by responsibility.

- :mod:`.schemas`: the request, response and error bodies (pydantic);
- :mod:`.state`: the results cache (:class:`~.state.ResultStore`), the request producer and the app state;
- :mod:`.deps`: dependencies as ``Annotated`` aliases (``StateDep``, ``ProducerDep``, ``SettingsDep``, the API key);
- :mod:`.admission`: the checks, backpressure and queueing every accepted request goes through;
- :mod:`.routes`: one router per resource (inference, OIP v2, models, health, metrics);
- :mod:`.middleware`: the request body limit (413);
- :mod:`.openapi`: the OpenAPI document, fitted to the running settings;
- :mod:`.main`: the app factory :func:`~.main.create_app`.

The entry point is ``PR2_async_inference/async_fastapi_server.py``.
"""
