"""The agents: the interface the engine drives, and the transports behind it.

The agent interface, process groups, the NDJSON transport, ``acp/``, the
sandbox, the agents lorch knows by name. May import ``lorch.store``,
``lorch.core`` and ``lorch.wire``.
"""
