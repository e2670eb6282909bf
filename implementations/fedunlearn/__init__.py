"""fedunlearn: an executable knowledge base on federated learning of LLMs and federated unlearning."""

__version__ = "0.2.0"
