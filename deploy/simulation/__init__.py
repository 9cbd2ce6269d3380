"""Simulated users and devices: population, base-model training data, fleets over Kafka.

Only the composition root (demo, benchmarks, tests) uses these; no device or service code path
imports them. Where a service needs something built from simulated data (the base model), the
composition root builds it here and passes it in.
"""
