"""Latency-aware structural channel pruning."""

# The smallest share of its channels a group keeps by default. Below it a group is a bottleneck that
# fine-tuning does not recover from (a ResNet stage's residual stream cut to a few channels feeds
# every block of the stage), and no importance criterion scored on the dense model sees that.
MIN_RATIO = 0.25
