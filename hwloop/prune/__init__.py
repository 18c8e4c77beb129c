"""Latency-aware structural channel pruning."""
