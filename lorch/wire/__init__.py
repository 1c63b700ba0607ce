"""The wire layer: what lorch and its agents say, and the rules it is checked by.

The vocabulary (roles, actions, events, limits), the NDJSON protocol, canonical
JSON, checksums, redaction, the JSON Schemas and their generated validators, the
exception tree. Imports nothing of lorch outside ``lorch.wire``.
"""
