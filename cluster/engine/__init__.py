"""The engine: a scheduler decides, a prefix cache keeps books, a model runner computes."""
