"""The ACP transport: coding agents that speak the Agent Client Protocol.

Claude Code (through ``claude-agent-acp``), Codex, Gemini CLI, goose, ... speak
ACP (JSON-RPC 2.0 over stdio). lorch is the client, built on the
``agent-client-protocol`` SDK, behind the same :class:`~lorch.agents.transport.AgentPort`
the NDJSON transport implements: the engine, the reducer, the ledger and the
crash harness do not know which one a role uses.

One agent process per port; one ACP session per command attempt, ``cwd`` = the
workspace. The modules, in the order a command meets them:

- :mod:`~lorch.agents.acp.port` — :class:`AcpTransport`, :class:`AcpPort`: the agent
  process, its ``initialize``, stop and kill, its log;
- :mod:`~lorch.agents.acp.turn` — one command attempt: a session, the prompt
  (:mod:`lorch.agents.acp.prompts`), and the terminal event lorch builds when the turn ends
  (:mod:`~lorch.agents.acp.events`: artifacts, tests, verdicts);
- :mod:`~lorch.agents.acp.client` — what the agent may ask of lorch: permission
  requests, answered by the role's policy (:mod:`~lorch.agents.acp.policy`), ``fs/*``
  and ``terminal/*`` (:mod:`~lorch.agents.acp.terminals`) inside the workspace;
- :mod:`~lorch.agents.acp.outbox` — what the agent says on the way (``session/update``)
  as ``log`` events — coalesced message text, tool calls with kind/title/status,
  plans, permission decisions — handed to the engine's inbox in bursts; every
  message goes whole into the agent's log;
- :mod:`~lorch.agents.acp.loop` — the SDK is asyncio: every ACP port runs on one event
  loop in a thread of its own, and hands what the engine must see to the
  engine's inbox with :meth:`~lorch.agents.transport.Inbox.post`.

Nothing is imported here (the SDK is slow to import): import the module you need.
"""
