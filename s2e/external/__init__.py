"""Adapters that run s2e policies, rewards' consumers and metrics in external simulators.

Every adapter imports its simulator lazily: importing ``s2e.external`` never needs Isaac Sim, and
building an adapter without it raises an ImportError that says what to install and from where.
"""
