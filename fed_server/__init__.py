"""The provider side of the federation: the Flower ServerApp (app.py), its strategy, SecAgg+, central DP."""
