"""Endpoint emulators: format cached credentials into each SDK's HTTP contract.

They never call upstream and never import a cloud SDK; guards.py stands in front of all of them.
"""
