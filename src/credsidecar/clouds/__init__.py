"""Exchangers: one per cloud, each turning a federated token into that cloud's credentials.

They know one federation API each and nothing about HTTP serving (see endpoints/).
"""
