"""The coordinator: one OpenAI endpoint in front of every replica of the cluster."""
