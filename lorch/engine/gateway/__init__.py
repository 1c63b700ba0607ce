"""The model gateway: lorch between an agent and its model provider (issue 24, docs/models.md).

- :mod:`lorch.engine.gateway.server`: :class:`~lorch.engine.gateway.server.Gateway`, the HTTP
  server (aiohttp, imported only by this module: ``import lorch`` never loads it);
- :mod:`lorch.engine.gateway.providers`: which requests are model calls, usage, errors;
- :mod:`lorch.engine.gateway.normalize`: normalized requests and their fingerprints;
- :mod:`lorch.engine.gateway.cassette`: recorded calls, one JSON line each;
- :mod:`lorch.engine.gateway.replay`: answering from the recorded calls.
"""
