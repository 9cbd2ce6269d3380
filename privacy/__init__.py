"""Sotto's transport-free privacy core.

Everything here is pure computation on bytes and numbers: no sockets, no files, no clocks
read behind the caller's back. edge_client/ and ingestion/ drive it over Kafka; tests drive
it directly. Wire contracts (envelope, region policy, protocol messages) are defined here
once and imported by every other package.
"""
