"""The shell: the command line and what it assembles.

CLI, run and resume, configuration loading and editing, first run, doctor,
verify, launch (agents from lorch.json). May import every layer; no layer
imports it.
"""
