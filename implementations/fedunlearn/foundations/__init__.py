"""Federated-learning foundations every unlearning method builds on (FedAvg, FedIT over LoRA)."""
