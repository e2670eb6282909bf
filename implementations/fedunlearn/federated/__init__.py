"""The federated substrate: local training, aggregation, history, costs, partitions."""
