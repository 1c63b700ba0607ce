"""Test tools that ship with lorch, for its own tests and for its users' tests.

- :mod:`lorch.testing.model_endpoint` — a scripted model endpoint speaking the
  Anthropic Messages API and the Gemini API on 127.0.0.1, so a real coding agent
  (Claude Code through its ACP adapter, Gemini CLI) can be driven offline.
"""
