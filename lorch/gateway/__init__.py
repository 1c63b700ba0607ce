"""The model gateway: lorch between an agent and its model provider (issue 24, docs/models.md).

- :mod:`lorch.gateway.server`: :class:`~lorch.gateway.server.Gateway`, the HTTP
  server (aiohttp, imported only by this module: ``import lorch`` never loads it);
- :mod:`lorch.gateway.providers`: which requests are model calls, usage, errors;
- :mod:`lorch.gateway.normalize`: normalized requests and their fingerprints;
- :mod:`lorch.gateway.cassette`: recorded calls, one JSON line each;
- :mod:`lorch.gateway.replay`: answering from the recorded calls.
"""
