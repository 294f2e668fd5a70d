"""Exchangers: one per cloud, each turning a federated token into that cloud's credentials.

They know one federation API each and nothing about HTTP serving (see endpoints/); all of them
satisfy `clouds.exchanger.Exchanger` and call upstream through `clouds.upstream_http`.
`clouds.contracts` holds the SDK-free types the endpoints import.
"""
