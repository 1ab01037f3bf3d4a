"""FastAGI handlers: one module per AGI script, each a thin face over the omnicc core.

A handler is a small class built with exactly the services it needs; agi/app.py builds
the route table from them explicitly. Nothing registers itself on import.
"""
